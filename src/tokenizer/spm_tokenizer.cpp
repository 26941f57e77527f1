#include "tokenizer/spm_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

// HF's converted Llama decoder; the Strip step only when the model adds a dummy prefix.
std::unique_ptr<Decoder> llama_decoder(bool strip_leading_space) {
  json::Json steps = json::Json::array();
  steps.push_back(
      {{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}});
  steps.push_back({{"type", "ByteFallback"}});
  steps.push_back({{"type", "Fuse"}});
  if (strip_leading_space) {
    steps.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }
  return make_decoder({{"type", "Sequence"}, {"decoders", steps}}, "decoder");
}

}  // namespace

SpmTokenizer::SpmTokenizer(const std::string& path, std::vector<AddedToken> extra_added)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const auto status = sp_->Load(path);
  if (!status.ok()) throw Error(path + ": cannot load SentencePiece model: " + status.ToString());
  piece_count_ = sp_->GetPieceSize();
  // Control pieces and unk behave as HF's special added tokens; tokenizer_config.json's
  // added_tokens_decoder (given later, so it wins) adds or overrides.
  std::vector<AddedToken> added;
  for (int32_t id = 0; id < piece_count_; ++id) {
    if (sp_->IsControl(id) || sp_->IsUnknown(id)) {
      AddedToken t;
      t.content = sp_->IdToPiece(id);
      t.id = id;
      t.special = true;
      added.push_back(std::move(t));
    }
  }
  for (AddedToken& t : extra_added) {
    if (const auto id = token_to_id(t.content); id && in_model(*id)) t.id = *id;
    t.normalized = false;  // there is no separate normalizer stage to match after
    added.push_back(std::move(t));
  }
  added_.build(std::move(added), [](std::string&) {});
  vocab_size_ = piece_count_;
  for (const AddedToken& t : added_.tokens()) vocab_size_ = std::max(vocab_size_, t.id + 1);

  // The model adds a dummy "▁" prefix when a lone "a" encodes to a piece starting with it.
  std::vector<std::string> pieces;
  const bool dummy_prefix =
      sp_->Encode("a", &pieces).ok() && !pieces.empty() && pieces[0].starts_with("\xE2\x96\x81");
  decoder_ = llama_decoder(dummy_prefix);
  if (sp_->bos_id() >= 0) bos_id_ = sp_->bos_id();
  if (sp_->eos_id() >= 0) eos_ids_.push_back(sp_->eos_id());
}

SpmTokenizer::~SpmTokenizer() = default;

std::vector<int32_t> SpmTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  if (add_special_tokens && add_bos_ && bos_id_) ids.push_back(*bos_id_);
  std::vector<TextSegment> segments;
  added_.split(text, false, segments);
  std::vector<int> piece_ids;
  for (const TextSegment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
      continue;
    }
    const auto status = sp_->Encode(text.substr(s.start, s.end - s.start), &piece_ids);
    if (!status.ok()) throw Error("SentencePiece encode failed: " + status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  if (add_special_tokens && add_eos_ && !eos_ids_.empty()) ids.push_back(eos_ids_.front());
  return ids;
}

std::string SpmTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (const AddedToken* t = added_.by_id(id)) {
      if (!(skip_special_tokens && t->special)) tokens.push_back(t->content);
    } else if (in_model(id)) {
      tokens.push_back(sp_->IdToPiece(id));
    }
  }
  decoder_->decode_chain(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

int32_t SpmTokenizer::vocab_size() const { return vocab_size_; }

std::optional<int32_t> SpmTokenizer::token_to_id(std::string_view token) const {
  if (const auto id = added_.find(token)) return id;
  // PieceToId answers unk for unknown pieces: check the piece really is there.
  const int id = sp_->PieceToId(std::string(token));
  if (in_model(id) && sp_->IdToPiece(id) == token) return id;
  return std::nullopt;
}

std::string SpmTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* t = added_.by_id(id)) return t->content;
  return in_model(id) ? sp_->IdToPiece(id) : std::string();
}

bool SpmTokenizer::is_special(int32_t id) const {
  const AddedToken* t = added_.by_id(id);
  return t != nullptr && t->special;
}

bool SpmTokenizer::is_byte_fallback(int32_t id) const {
  return in_model(id) && added_.by_id(id) == nullptr && sp_->IsByte(id);
}

}  // namespace qserve
