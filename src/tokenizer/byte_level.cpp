#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace qserve::byte_level {

namespace {

struct Tables {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int, 512> cp_to_byte;  // every mapped code point is below 0x144

  Tables() {
    cp_to_byte.fill(-1);
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp =
          printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      utf8::append(byte_to_utf8[b], cp);
      cp_to_byte[cp] = b;
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

std::string_view byte_to_char(unsigned char b) {
  return tables().byte_to_utf8[b];
}

void encode(std::string_view text, std::string& out) {
  const Tables& t = tables();
  for (const char c : text) out.append(t.byte_to_utf8[static_cast<unsigned char>(c)]);
}

int char_to_byte(char32_t cp) {
  return cp < 512 ? tables().cp_to_byte[cp] : -1;
}

}  // namespace qserve::byte_level
