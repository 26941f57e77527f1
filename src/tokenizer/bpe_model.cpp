#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

constexpr size_t kMaxCachedWordBytes = 256;  // as HF: long words are rare and costly to keep
constexpr size_t kCacheCapacity = 1 << 16;
// Ids index a dense table; refuse files whose ids would make it absurdly large.
constexpr int64_t kMaxIdSlack = 1 << 20;

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

std::string hex_byte_token(unsigned b) {
  static const char* digits = "0123456789ABCDEF";
  return std::string("<0x") + digits[b >> 4] + digits[b & 15] + ">";
}

}  // namespace

BpeModel::BpeModel(const json::Json& j, const std::string& where) {
  const json::Json& vocab = json::require(j, "vocab", where);
  if (!vocab.is_object()) throw Error(where + ".vocab: expected an object of token: id");
  int64_t max_id = -1;
  for (const auto& [token, id_json] : vocab.items()) {
    const int32_t id = json::as_id(id_json, where + ".vocab[\"" + token + "\"]");
    vocab_[token] = id;
    max_id = std::max<int64_t>(max_id, id);
  }
  if (max_id >= static_cast<int64_t>(vocab_.size()) * 2 + kMaxIdSlack) {
    throw Error(where + ".vocab: ids are too sparse (largest " + std::to_string(max_id) + " for " +
                std::to_string(vocab_.size()) + " tokens)");
  }
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  has_id_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : vocab_) {
    id_to_token_[id] = token;
    has_id_[id] = true;
  }

  byte_fallback_ = json::opt_bool(j, "byte_fallback", false, where);
  fuse_unk_ = json::opt_bool(j, "fuse_unk", false, where);
  ignore_merges_ = json::opt_bool(j, "ignore_merges", false, where);
  prefix_ = json::opt_string(j, "continuing_subword_prefix", "", where);
  suffix_ = json::opt_string(j, "end_of_word_suffix", "", where);
  if (const json::Json* unk = json::member(j, "unk_token")) {
    const std::string name = json::as_string(*unk, where + ".unk_token");
    const auto it = vocab_.find(name);
    if (it == vocab_.end()) throw Error(where + ".unk_token: '" + name + "' is not in the vocab");
    unk_id_ = it->second;
  }
  byte_ids_.fill(-1);
  if (byte_fallback_) {
    for (unsigned b = 0; b < 256; ++b) {
      const auto it = vocab_.find(hex_byte_token(b));
      if (it != vocab_.end()) byte_ids_[b] = it->second;
    }
  }

  const json::Json& merges = json::require(j, "merges", where);
  if (!merges.is_array()) throw Error(where + ".merges: expected an array");
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string at = where + ".merges[" + std::to_string(rank) + "]";
    const json::Json& m = merges[rank];
    std::string a;
    std::string b;
    if (m.is_string()) {  // legacy "a b" form
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        throw Error(at + ": expected \"<left> <right>\", got '" + s + "'");
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      a = json::as_string(m[0], at + "[0]");
      b = json::as_string(m[1], at + "[1]");
    } else {
      throw Error(at + ": expected \"a b\" or [\"a\", \"b\"]");
    }
    const auto ia = vocab_.find(a);
    if (ia == vocab_.end()) throw Error(at + ": token '" + a + "' is not in the vocab");
    const auto ib = vocab_.find(b);
    if (ib == vocab_.end()) throw Error(at + ": token '" + b + "' is not in the vocab");
    const std::string_view b_tail =
        !prefix_.empty() && b.starts_with(prefix_) ? std::string_view(b).substr(prefix_.size()) : b;
    const std::string merged = a + std::string(b_tail);
    const auto im = vocab_.find(merged);
    if (im == vocab_.end()) {
      throw Error(at + ": merged token '" + merged + "' is not in the vocab");
    }
    // A repeated pair keeps its last rank, as HF's map construction does.
    merges_[pair_key(ia->second, ib->second)] = Merge{static_cast<uint32_t>(rank), im->second};
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || id >= id_end() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

const BpeModel::Merge* BpeModel::find_merge(int32_t a, int32_t b) const {
  const auto it = merges_.find(pair_key(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::encode(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (const auto it = vocab_.find(piece); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() < kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (const auto it = cache_.find(piece); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(piece, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();
    cache_.emplace(std::string(piece), std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  // Initial symbols: one per character (with byte fallback or unk for unknown characters).
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  std::optional<int32_t> pending_unk;  // an unk not yet emitted, so fuse_unk can extend it
  std::string decorated;
  for (size_t i = 0; i < word.size();) {
    const size_t n = utf8::char_length(word, i);
    const std::string_view ch = word.substr(i, n);
    const bool is_first = i == 0;
    i += n;
    const bool is_last = i >= word.size();
    std::string_view key = ch;
    if ((!is_first && !prefix_.empty()) || (is_last && !suffix_.empty())) {
      decorated.assign(!is_first ? prefix_ : "");
      decorated.append(ch);
      if (is_last) decorated.append(suffix_);
      key = decorated;
    }
    if (const auto it = vocab_.find(key); it != vocab_.end()) {
      if (pending_unk) ids.push_back(*std::exchange(pending_unk, std::nullopt));
      ids.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (const char c : key) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // HF emits byte tokens without flushing a pending unk first; keep that order.
        for (const char c : key) ids.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && !fuse_unk_) ids.push_back(*pending_unk);
      pending_unk = unk_id_;
    }
    // Without an unk token an unknown character is dropped, as in HF.
  }
  if (pending_unk) ids.push_back(*pending_unk);

  const int32_t n = static_cast<int32_t>(ids.size());
  if (n <= 1) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }

  // Merge by rank with a min-heap keyed on (rank, position), on a linked list of symbols; stale
  // heap entries are detected by re-checking the pair (HF's Word::merge_all).
  std::vector<int32_t> prev(n);
  std::vector<int32_t> next(n);
  std::vector<bool> alive(n, true);
  for (int32_t k = 0; k < n; ++k) {
    prev[k] = k - 1;
    next[k] = k + 1 < n ? k + 1 : -1;
  }
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  for (int32_t k = 0; k + 1 < n; ++k) {
    if (const Merge* m = find_merge(ids[k], ids[k + 1])) heap.push({m->rank, k, m->new_id});
  }
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    const int32_t pos = top.pos;
    if (!alive[pos] || next[pos] < 0) continue;
    const int32_t right = next[pos];
    const Merge* m = find_merge(ids[pos], ids[right]);
    if (m == nullptr || m->new_id != top.new_id) continue;
    ids[pos] = top.new_id;
    alive[right] = false;
    next[pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = pos;
    if (prev[pos] >= 0) {
      if (const Merge* pm = find_merge(ids[prev[pos]], ids[pos])) {
        heap.push({pm->rank, prev[pos], pm->new_id});
      }
    }
    if (next[pos] >= 0) {
      if (const Merge* nm = find_merge(ids[pos], ids[next[pos]])) {
        heap.push({nm->rank, pos, nm->new_id});
      }
    }
  }
  for (int32_t k = 0; k >= 0; k = next[k]) out.push_back(ids[k]);
}

}  // namespace qserve
