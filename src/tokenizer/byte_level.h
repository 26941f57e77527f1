// GPT-2's byte-to-unicode table: every byte maps to one printable character (printable Latin-1
// bytes to themselves, the rest to U+0100 onwards), so byte-level BPE vocabularies are strings.
#pragma once

#include <string>
#include <string_view>

namespace qserve::byte_level {

// The UTF-8 encoding of the character that stands for byte b.
std::string_view byte_to_char(unsigned char b);

// Appends the byte-level form of every byte of text.
void encode(std::string_view text, std::string& out);

// The byte that code point cp stands for, or -1 if cp is not in the table.
int char_to_byte(char32_t cp);

// The regex of GPT-2's ByteLevel pre-tokenizer (use_regex = true).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace qserve::byte_level
