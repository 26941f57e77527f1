#include "tokenizer/normalizer.h"

#include <optional>
#include <vector>

#include "core/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/replace_pattern.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& s : steps_) s->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);  // HF leaves empty strings alone
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  explicit ReplaceNormalizer(ReplacePattern pattern) : pattern_(std::move(pattern)) {}
  void normalize(std::string& text) const override { text = pattern_.replace_all(text); }

 private:
  ReplacePattern pattern_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0;
    size_t end = text.size();
    if (left_) {
      while (begin < end) {
        const size_t n = utf8::char_length(text, begin);
        if (!utf8::is_whitespace(utf8::decode_at(text, begin, n))) break;
        begin += n;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        const size_t n = end - start;
        if (!utf8::is_whitespace(utf8::decode_at(text, start, n))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_;
  bool right_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json::Json& j, const std::string& where,
                                            int depth) {
  json::check_depth(depth, where);
  const std::string type = json::type_of(j, where);
  if (type == "Sequence") {
    const json::Json& list = json::require(j, "normalizers", where);
    if (!list.is_array()) throw Error(where + ".normalizers: expected an array");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      steps.push_back(
          make_normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]", depth + 1));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(
        json::as_string(json::require(j, "prepend", where), where + ".prepend"));
  }
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(ReplacePattern(j, where));
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(json::opt_bool(j, "strip_left", true, where),
                                             json::opt_bool(j, "strip_right", true, where));
  }
  throw Error(where + ": normalizer type '" + type +
              "' is not supported (supported: Sequence, Prepend, Replace, Strip)");
}

}  // namespace qserve
