#include "tokenizer/decoder.h"

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/replace_pattern.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Splits s into its characters (s is valid UTF-8).
std::vector<std::string_view> chars_of(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8::char_length(s, i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

std::string single_char(const json::Json& j, const char* key, const std::string& where) {
  const std::string c = json::as_string(json::require(j, key, where), where + "." + key);
  if (c.empty() || utf8::valid_sequence_length(c, 0) != c.size()) {
    throw Error(where + "." + key + ": expected exactly one character");
  }
  return c;
}

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    std::string raw;
    for (const std::string& t : tokens) {
      // A token with a character outside the byte table (an added token such as "<|日本|>")
      // contributes its own UTF-8 bytes, as in HF.
      raw.clear();
      bool mapped = true;
      for (size_t i = 0; i < t.size() && mapped;) {
        const size_t n = utf8::char_length(t, i);
        const int b = n == 1 && static_cast<unsigned char>(t[i]) >= 0x80
                          ? -1
                          : byte_level::char_to_byte(utf8::decode_at(t, i, n));
        if (b < 0) {
          mapped = false;
        } else {
          raw.push_back(static_cast<char>(b));
        }
        i += n;
      }
      bytes.append(mapped ? raw : t);
    }
    tokens.assign(1, utf8::lossy(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      size_t pos = 0;
      size_t hit = 0;
      while ((hit = t.find(replacement_, pos)) != std::string::npos) {
        out.append(t, pos, hit - pos);
        // HF drops every replacement character of the first token, not only a leading one.
        if (!(i == 0 && strip_first_)) out.push_back(' ');
        pos = hit + replacement_.size();
      }
      out.append(t, pos, std::string::npos);
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  explicit ReplaceDecoder(ReplacePattern pattern) : pattern_(std::move(pattern)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = pattern_.replace_all(t);
  }

 private:
  ReplacePattern pattern_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string group;
    size_t group_tokens = 0;
    auto flush = [&] {
      if (group_tokens == 0) return;
      if (utf8::is_valid(group)) {
        out.push_back(group);
      } else {
        // HF: an undecodable run becomes one U+FFFD per byte token.
        for (size_t k = 0; k < group_tokens; ++k) out.emplace_back(utf8::kReplacement);
      }
      group.clear();
      group_tokens = 0;
    };
    for (std::string& t : tokens) {
      unsigned char b = 0;
      if (parse_byte_token(t, b)) {
        group.push_back(static_cast<char>(b));
        ++group_tokens;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
  bool groups_byte_tokens() const override { return true; }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      const std::vector<std::string_view> chars = chars_of(t);
      size_t begin = 0;
      while (begin < start_ && begin < chars.size() && chars[begin] == content_) ++begin;
      size_t end = chars.size();
      size_t stripped = 0;
      while (stripped < stop_ && end > begin && chars[end - 1] == content_) {
        --end;
        ++stripped;
      }
      std::string out;
      for (size_t k = begin; k < end; ++k) out.append(chars[k]);
      t = std::move(out);
    }
  }

 private:
  std::string content_;
  size_t start_;
  size_t stop_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& s : steps_) s->decode_chain(tokens);
  }
  bool groups_byte_tokens() const override {
    for (const auto& s : steps_) {
      if (s->groups_byte_tokens()) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

size_t count(const json::Json& j, const char* key, const std::string& where) {
  const json::Json* v = json::member(j, key);
  if (v == nullptr) return 0;
  if (!v->is_number_unsigned() && !v->is_number_integer()) {
    throw Error(where + "." + key + ": expected a count");
  }
  const int64_t n = v->get<int64_t>();
  if (n < 0) throw Error(where + "." + key + ": expected a count");
  return static_cast<size_t>(n);
}

}  // namespace

bool parse_byte_token(const std::string& token, unsigned char& byte) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return false;
  // Rust's u8::from_str_radix, which HF uses here, also accepts a leading '+'.
  const int hi = token[3] == '+' ? 0 : hex_value(token[3]);
  const int lo = hex_value(token[4]);
  if (hi < 0 || lo < 0) return false;
  byte = static_cast<unsigned char>(hi * 16 + lo);
  return true;
}

std::unique_ptr<Decoder> make_decoder(const json::Json& j, const std::string& where, int depth) {
  json::check_depth(depth, where);
  const std::string type = json::type_of(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    bool strip_first = true;
    if (const json::Json* s = json::member(j, "prepend_scheme")) {
      strip_first = json::as_string(*s, where + ".prepend_scheme") != "never";
    }
    if (!json::opt_bool(j, "add_prefix_space", true, where)) strip_first = false;
    return std::make_unique<MetaspaceDecoder>(single_char(j, "replacement", where), strip_first);
  }
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(ReplacePattern(j, where));
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(single_char(j, "content", where),
                                          count(j, "start", where), count(j, "stop", where));
  }
  if (type == "Sequence") {
    const json::Json& list = json::require(j, "decoders", where);
    if (!list.is_array()) throw Error(where + ".decoders: expected an array");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      steps.push_back(
          make_decoder(list[i], where + ".decoders[" + std::to_string(i) + "]", depth + 1));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  throw Error(where + ": decoder type '" + type +
              "' is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
              "Strip, Sequence)");
}

}  // namespace qserve
