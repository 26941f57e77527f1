// A HF tokenizer.json with a BPE model: added tokens -> normalizer -> pre-tokenizer -> BPE ->
// post-processor for encode, and the decoder chain for decode.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "tokenizer/added_vocab.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/json_util.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace qserve {

class HfTokenizer final : public Tokenizer {
 public:
  // Builds from a parsed tokenizer.json; throws qserve::Error naming the bad field (the caller
  // adds the file name).
  explicit HfTokenizer(const json::Json& j);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  int32_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;
  bool is_special(int32_t id) const override;
  bool is_byte_fallback(int32_t id) const override;

  // Replaces the post-processor (the Llama tokenizer classes rebuild it from add_bos_token and
  // add_eos_token in tokenizer_config.json).
  void set_post_processor(std::unique_ptr<PostProcessor> p) { post_processor_ = std::move(p); }

 private:
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocab added_;
  int32_t vocab_size_ = 0;  // one past the largest id of the model or the added tokens
};

// Parses and builds; every failure (bad JSON included) is a qserve::Error starting with source.
std::unique_ptr<HfTokenizer> parse_hf_tokenizer(std::string_view json_text,
                                                const std::string& source);

}  // namespace qserve
