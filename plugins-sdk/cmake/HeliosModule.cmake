# helios_add_module(<name> SOURCES <files...> [LIBRARIES <libs...>])
#
# Builds <name>.so (no "lib" prefix) against the heliosd plugin SDK, with
# hidden visibility so only helios_module_init is exported. Works in the
# heliosd tree and out of tree after find_package(HeliosPlugin).
function(helios_add_module name)
  cmake_parse_arguments(HM "" "" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT HM_SOURCES)
    message(FATAL_ERROR "helios_add_module(${name}): SOURCES is required")
  endif()
  add_library(${name} MODULE ${HM_SOURCES})
  target_link_libraries(${name} PRIVATE helios::sdk ${HM_LIBRARIES})
  set_target_properties(${name} PROPERTIES
    PREFIX "" C_VISIBILITY_PRESET hidden C_STANDARD 17 C_EXTENSIONS OFF)
  if(DEFINED HELIOS_BUILD_MODULE_DIR)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY "${HELIOS_BUILD_MODULE_DIR}")
    install(TARGETS ${name} LIBRARY DESTINATION "${HELIOS_MODULE_INSTALL_DIR}" COMPONENT runtime)
  endif()
endfunction()
