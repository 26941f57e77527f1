// Added tokens (special tokens such as <|eot_id|> and user-added words): found in the text
// before the model sees it, leftmost-longest, honouring lstrip/rstrip/single_word, as HF's
// AddedVocabulary does. Tokens with normalized=false are matched in the raw text, the others
// in the normalized text, in their normalized form.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace qserve {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A slice of the text: an added token (id >= 0) or plain text to tokenize (id < 0).
struct TextSegment {
  size_t start;
  size_t end;
  int32_t id;
};

class AddedVocab {
 public:
  // normalize (may be null) gives the pattern of a normalized=true token.
  template <typename Normalize>
  void build(std::vector<AddedToken> tokens, const Normalize& normalize);

  // Appends the segments of text for the raw (normalized=false) or normalized token set.
  void split(std::string_view text, bool normalized_set, std::vector<TextSegment>& out) const;
  bool has_tokens(bool normalized_set) const { return tries_[normalized_set].nodes.size() > 1; }

  std::optional<int32_t> find(std::string_view content) const;
  // The added token with this id, or nullptr.
  const AddedToken* by_id(int32_t id) const;
  // What decode shows for an added token: its content, or its normalized form if it has one.
  const std::string& display(const AddedToken& t) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Trie {
    struct Node {
      int32_t token = -1;  // index into tokens_ of the token ending here
    };
    std::vector<Node> nodes{Node{}};
    std::unordered_map<uint64_t, int32_t> edges;  // (node << 8 | byte) -> child
    std::array<bool, 256> first_byte{};
    void insert(std::string_view pattern, int32_t token);
    // Index of the longest token starting at text[pos], and its length.
    int32_t longest_at(std::string_view text, size_t pos, size_t& length) const;
  };
  void add_pattern(bool normalized_set, std::string_view pattern, int32_t index);

  std::vector<AddedToken> tokens_;
  std::vector<std::string> patterns_;  // normalized form (normalized tokens), else content
  std::unordered_map<std::string, int32_t> by_content_;
  std::unordered_map<int32_t, int32_t> by_id_;
  std::array<Trie, 2> tries_;
};

template <typename Normalize>
void AddedVocab::build(std::vector<AddedToken> tokens, const Normalize& normalize) {
  tokens_.clear();
  patterns_.clear();
  for (AddedToken& t : tokens) {
    if (t.content.empty()) continue;  // HF ignores empty added tokens
    std::string pattern = t.content;
    if (t.normalized) normalize(pattern);
    if (const auto it = by_content_.find(t.content); it != by_content_.end()) {
      // A repeated content keeps the later definition, as HF's add_tokens does.
      tokens_[it->second] = std::move(t);
      patterns_[it->second] = std::move(pattern);
      continue;
    }
    by_content_[t.content] = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(std::move(t));
    patterns_.push_back(std::move(pattern));
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    by_id_[tokens_[i].id] = static_cast<int32_t>(i);
    add_pattern(tokens_[i].normalized, patterns_[i], static_cast<int32_t>(i));
  }
}

}  // namespace qserve
