# cmake -DIN="a.js;b.js" -DOUT=header -P embed.cmake: the files as C byte
# arrays, in a table js_prelude_files[] of {name, bytes, length}, in order.
set(table "")
set(arrays "")
set(i 0)
foreach(f ${IN})
  file(READ "${f}" hex HEX)
  string(LENGTH "${hex}" n)
  math(EXPR len "${n} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
  get_filename_component(name "${f}" NAME)
  string(APPEND arrays "static const unsigned char js_prelude_src${i}[] = {\n${bytes}0x00};\n")
  string(APPEND table "    {\"helios:${name}\", js_prelude_src${i}, ${len}},\n")
  math(EXPR i "${i} + 1")
endforeach()
file(WRITE "${OUT}.tmp" "/* generated from the module's .js files by embed.cmake; do not edit */\n"
     "${arrays}"
     "static const struct {\n    const char *name;\n    const unsigned char *src;\n    size_t len;\n"
     "} js_prelude_files[] = {\n${table}};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
