// UTF-8 helpers shared by the tokenizers: validation, HF-compatible lossy decoding, and the
// Unicode White_Space set (which Rust's char::is_whitespace, and so HF, uses).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace qserve::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i], or 0 if none starts there (invalid lead
// byte, bad continuation, overlong form, surrogate, > U+10FFFF, or truncated).
size_t valid_sequence_length(std::string_view s, size_t i);

// Decodes the valid sequence of length n at s[i] (n from valid_sequence_length).
char32_t decode_at(std::string_view s, size_t i, size_t n);

void append(std::string& out, char32_t cp);

bool is_valid(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD. Returns s
// unchanged (copied) when it is valid.
std::string lossy(std::string_view s);

// Byte length of the character starting at s[i] in valid UTF-8 (1 for a stray byte).
size_t char_length(std::string_view s, size_t i);

// Unicode White_Space (Rust char::is_whitespace).
bool is_whitespace(char32_t cp);

}  // namespace qserve::utf8
