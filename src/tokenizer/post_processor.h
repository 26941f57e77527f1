// HF post-processors, applied when encode(text, add_special_tokens = true): TemplateProcessing
// (the single-sequence template), BertProcessing/RobertaProcessing, ByteLevel (offsets only, so
// nothing to do on ids) and Sequence of them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_util.h"

namespace qserve {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids) const = 0;
};

std::unique_ptr<PostProcessor> make_post_processor(const json::Json& j, const std::string& where,
                                                   int depth = 0);

// ids = prefix + ids + suffix: what the Llama tokenizers' add_bos_token/add_eos_token build.
std::unique_ptr<PostProcessor> make_wrap_processor(std::vector<int32_t> prefix,
                                                   std::vector<int32_t> suffix);

}  // namespace qserve
