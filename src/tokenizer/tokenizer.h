// Tokenizers: HF tokenizer.json (byte-level BPE of Llama-3/Qwen/GPT-2 style, and the
// SentencePiece-style BPE of Llama-2/Mistral with metaspace and byte fallback) and SentencePiece
// tokenizer.model files (through libsentencepiece). One interface for all.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qserve {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes text. add_special_tokens applies the post-processor (e.g. prepends BOS) exactly as
  // HF `tokenizer(text)` does; special/added tokens appearing in the text are always matched.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  // Decodes ids to text (HF `decode`, clean_up_tokenization_spaces = false). Special tokens are
  // rendered unless skip_special_tokens.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;  // the vocab string; "" if out of range
  virtual bool is_special(int32_t id) const = 0;
  // Whether id is a byte-fallback token (<0xNN>) whose run of byte tokens decodes as one group:
  // its text can still change with the next token, so IncrementalDetokenizer waits after it.
  virtual bool is_byte_fallback(int32_t /*id*/) const { return false; }

  std::optional<int32_t> bos_id() const { return bos_id_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // Raw chat_template string from tokenizer_config.json ("" if none).
  const std::string& chat_template() const { return chat_template_; }

 protected:
  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
  std::string chat_template_;
  friend std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

  // Loads a tokenizer.json held in memory (no config files: bos_id and eos_ids stay unset). source
  // names it in error messages. Throws qserve::Error for anything malformed, including bad JSON.
  std::unique_ptr<Tokenizer> load_tokenizer_json_string(std::string_view json,
                                                        const std::string& source);
};

// Loads DIR/tokenizer.json if present, else DIR/tokenizer.model; reads tokenizer_config.json (bos,
// eos, chat_template) and generation_config.json (eos_token_id list) when present. Throws
// qserve::Error naming the file on malformed input.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

// Loads a tokenizer.json held in memory (no config files: bos_id and eos_ids stay unset). source
// names it in error messages. Throws qserve::Error for anything malformed, including bad JSON.
std::unique_ptr<Tokenizer> load_tokenizer_json_string(std::string_view json,
                                                      const std::string& source);

// Emits text only once it forms complete UTF-8 and is stable under the next tokens (the
// prefix/read-offset algorithm): feeding every id of a sequence and then flush() yields exactly
// tokenizer.decode(all ids).
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens);
  std::string push(int32_t id);  // new text, possibly empty
  std::string flush();           // whatever is left (replacement chars for broken UTF-8)

 private:
  std::string advance(bool final);

  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  // ids_[prefix_offset_, read_offset_) decode to text already emitted; it is decoded again with
  // the new ids so that context-dependent decoding (a leading space, byte groups) stays right.
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
  bool in_byte_run_ = false;  // the last id decode() keeps is a byte-fallback token
};

}  // namespace qserve
