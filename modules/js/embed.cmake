# cmake -DIN=file -DOUT=header -P embed.cmake: IN as a C byte array.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp" "/* generated from prelude.js by embed.cmake; do not edit */\n"
     "static const unsigned char js_prelude_src[] = {\n${bytes}0x00};\n"
     "static const size_t js_prelude_len = ${len};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
