#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace qserve {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  ids_.push_back(id);
  // A byte-fallback run decodes as a whole (all U+FFFD if invalid), so even a complete
  // character inside it is not final until a token that decode() keeps, and that is not a byte
  // token, closes the run. Ids that decode() drops (skipped specials, unknown ids) do not close
  // it; waiting is always safe, since flush() emits whatever is left.
  const bool dropped = id < 0 || id >= tok_.vocab_size() ||
                       (skip_special_ && tok_.is_special(id)) || tok_.id_to_token(id).empty();
  if (!dropped) in_byte_run_ = tok_.is_byte_fallback(id);
  if (in_byte_run_) return {};
  return advance(false);
}

std::string IncrementalDetokenizer::flush() {
  return advance(true);
}

std::string IncrementalDetokenizer::advance(bool final) {
  const std::span<const int32_t> all(ids_);
  const std::string prefix =
      tok_.decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  const std::string text = tok_.decode(all.subspan(prefix_offset_), skip_special_);
  if (text.size() <= prefix.size()) return {};
  // A trailing U+FFFD is usually a character whose remaining bytes are still to come.
  if (!final && text.ends_with(utf8::kReplacement)) return {};
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return text.substr(prefix.size());
}

}  // namespace qserve
