// A SentencePiece tokenizer.model, encoded through libsentencepiece and decoded the way HF's
// Llama tokenizer does (pieces with ▁ -> space, <0xNN> byte pieces grouped, one leading space
// stripped). Control pieces (<s>, </s>), unk and tokenizer_config.json's added tokens are
// matched in the text first; each stretch of text between them is encoded separately.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/added_vocab.h"
#include "tokenizer/decoder.h"
#include "tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace qserve {

class SpmTokenizer final : public Tokenizer {
 public:
  // Throws qserve::Error naming path when the model cannot be loaded.
  SpmTokenizer(const std::string& path, std::vector<AddedToken> extra_added);
  ~SpmTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  int32_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  bool is_byte_fallback(int32_t id) const override;

  // HF LlamaTokenizer's add_bos_token (default true) and add_eos_token (default false).
  void set_add_bos_eos(bool add_bos, bool add_eos) {
    add_bos_ = add_bos;
    add_eos_ = add_eos;
  }

 private:
  bool in_model(int32_t id) const { return id >= 0 && id < piece_count_; }

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int32_t piece_count_ = 0;
  int32_t vocab_size_ = 0;  // one past the largest id of the model or the added tokens
  AddedVocab added_;
  std::unique_ptr<Decoder> decoder_;
  bool add_bos_ = true;
  bool add_eos_ = false;
};

}  // namespace qserve
