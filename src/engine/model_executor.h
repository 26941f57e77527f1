// The engine's window onto a model: run one varlen step over sequences whose K/V pages the
// engine's BlockManager assigned, and return the logits of each sequence's last token. The
// engine holds no model or device code, so tests and the host-overhead benchmark drive it with
// a fake executor, and each backend (CPU now, CUDA next) provides one.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "engine/block_manager.h"

namespace qserve {

class LlamaModel;

class ModelExecutor {
 public:
  virtual ~ModelExecutor() = default;
  virtual int64_t vocab_size() const = 0;
  // Concurrent sequences the cache has room for (SeqSpan::kv_slot < num_slots()).
  virtual int64_t num_slots() const = 0;
  // Pages of the cache (page ids handed out by the BlockManager are below this).
  virtual int64_t num_pages() const = 0;
  // tokens: the rows of every sequence's chunk, concatenated; seqs[i] describes sequence i and
  // pages[i] is its page table, covering context_len + num_tokens positions. Writes logits
  // [seqs.size(), vocab] (the last row of each sequence) to `logits`.
  virtual void execute(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                       std::span<const PageTable* const> pages, std::vector<float>& logits) = 0;
  virtual std::string describe() const = 0;
  // Evaluation (perplexity, golden logits): logits [tokens.size(), vocab] at every position of
  // one sequence run from an empty context, through the same forward as execute(). Uses the
  // first cache slot and pages 0 .. pages_for_tokens(n) - 1, so call it only while no engine
  // holds pages of this executor. Throws qserve::Error if the executor cannot score.
  virtual void score(std::span<const int32_t> tokens, std::vector<float>& logits);
};

// The CPU backend's executor over a LlamaModel (which must outlive it). KV4/KV8 caches are
// paged with the BlockManager's page ids; the KV16 reference cache (fp32) keeps each slot's
// positions contiguous (max_model_len per slot), so there the pages are an admission budget
// rather than memory - see docs/engine.md.
std::unique_ptr<ModelExecutor> make_cpu_executor(const LlamaModel& model, int64_t num_pages,
                                                 int64_t num_slots, int64_t max_model_len);

}  // namespace qserve
