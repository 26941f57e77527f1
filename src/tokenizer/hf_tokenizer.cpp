#include "tokenizer/hf_tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

std::vector<AddedToken> parse_added_tokens(const json::Json& j, const BpeModel& model) {
  std::vector<AddedToken> out;
  const json::Json* list = json::member(j, "added_tokens");
  if (list == nullptr) return out;
  if (!list->is_array()) throw Error("added_tokens: expected an array");
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string at = "added_tokens[" + std::to_string(i) + "]";
    const json::Json& t = (*list)[i];
    AddedToken a;
    a.content = json::as_string(json::require(t, "content", at), at + ".content");
    a.id = json::as_id(json::require(t, "id", at), at + ".id");
    a.special = json::opt_bool(t, "special", false, at);
    a.lstrip = json::opt_bool(t, "lstrip", false, at);
    a.rstrip = json::opt_bool(t, "rstrip", false, at);
    a.single_word = json::opt_bool(t, "single_word", false, at);
    a.normalized = json::opt_bool(t, "normalized", !a.special, at);
    // HF gives a token that is also in the model's vocab the model's id.
    if (const auto id = model.token_to_id(a.content)) a.id = *id;
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace

HfTokenizer::HfTokenizer(const json::Json& j) {
  if (!j.is_object()) throw Error("expected a JSON object at the top level");
  const json::Json* model = json::member(j, "model");
  if (model == nullptr) throw Error("missing 'model'");
  // HF reads an untagged model by its fields; BPE is the one with merges.
  const std::string type = json::member(*model, "type") != nullptr
                               ? json::type_of(*model, "model")
                               : (json::member(*model, "merges") != nullptr ? "BPE" : "");
  if (type != "BPE") {
    throw Error("model: model type '" + type + "' is not supported (only BPE)");
  }
  model_ = std::make_unique<BpeModel>(*model, "model");
  if (const json::Json* n = json::member(j, "normalizer")) {
    normalizer_ = make_normalizer(*n, "normalizer");
  }
  if (const json::Json* p = json::member(j, "pre_tokenizer")) {
    pre_tokenizer_ = make_pre_tokenizer(*p, "pre_tokenizer");
  }
  if (const json::Json* p = json::member(j, "post_processor")) {
    post_processor_ = make_post_processor(*p, "post_processor");
  }
  if (const json::Json* d = json::member(j, "decoder")) decoder_ = make_decoder(*d, "decoder");
  added_.build(parse_added_tokens(j, *model_), [this](std::string& s) {
    if (normalizer_) normalizer_->normalize(s);
  });
  vocab_size_ = model_->id_end();
  for (const AddedToken& t : added_.tokens()) vocab_size_ = std::max(vocab_size_, t.id + 1);
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  // The pipeline (and PCRE2) needs valid UTF-8: broken input is read as HF would read
  // bytes.decode("utf-8", errors="replace").
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<TextSegment> raw_segments;
  std::vector<TextSegment> segments;
  std::vector<Piece> pieces;
  std::string normalized;
  added_.split(text, false, raw_segments);
  for (const TextSegment& raw : raw_segments) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    // Normalize each stretch of text between raw added tokens on its own, as HF does.
    normalized.assign(text.substr(raw.start, raw.end - raw.start));
    if (normalizer_) normalizer_->normalize(normalized);
    segments.clear();
    if (added_.has_tokens(true)) {
      added_.split(normalized, true, segments);
    } else if (!normalized.empty()) {
      segments.push_back({0, normalized.size(), -1});
    }
    for (const TextSegment& seg : segments) {
      if (seg.id >= 0) {
        ids.push_back(seg.id);
        continue;
      }
      pieces.clear();
      pieces.push_back(Piece{normalized.substr(seg.start, seg.end - seg.start),
                             raw.start == 0 && seg.start == 0});
      if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
      for (const Piece& p : pieces) model_->encode(p.text, ids);
    }
  }
  if (add_special_tokens && post_processor_) post_processor_->process(ids);
  return ids;
}

std::string HfTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (const AddedToken* t = added_.by_id(id)) {
      if (!(skip_special_tokens && t->special)) tokens.push_back(added_.display(*t));
    } else if (const std::string* s = model_->id_to_token(id)) {
      tokens.push_back(*s);
    }
    // Unknown ids are dropped, as HF does.
  }
  std::string out;
  if (decoder_) {
    decoder_->decode_chain(tokens);
    for (const std::string& t : tokens) out += t;
  } else {
    // Without a decoder HF joins the tokens with spaces.
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out += ' ';
      out += tokens[i];
    }
  }
  return out;
}

int32_t HfTokenizer::vocab_size() const { return vocab_size_; }

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  if (const auto id = added_.find(token)) return id;
  return model_->token_to_id(token);
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* t = added_.by_id(id)) return t->content;
  const std::string* s = model_->id_to_token(id);
  return s == nullptr ? std::string() : *s;
}

bool HfTokenizer::is_special(int32_t id) const {
  const AddedToken* t = added_.by_id(id);
  return t != nullptr && t->special;
}

bool HfTokenizer::is_byte_fallback(int32_t id) const {
  if (!decoder_ || !decoder_->groups_byte_tokens() || added_.by_id(id) != nullptr) return false;
  const std::string* s = model_->id_to_token(id);
  unsigned char b = 0;
  return s != nullptr && parse_byte_token(*s, b);
}

std::unique_ptr<HfTokenizer> parse_hf_tokenizer(std::string_view json_text,
                                                const std::string& source) {
  const json::Json j = json::parse(json_text, source);
  try {
    return std::make_unique<HfTokenizer>(j);
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  } catch (const std::exception& e) {
    // nlohmann type errors and the like: still a malformed file, not a crash.
    throw Error(source + ": " + e.what());
  }
}

}  // namespace qserve
