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

// What the engine needs from one sequence's last-token logits in a step.
struct RowSample {
  enum class Kind : uint8_t {
    kNone,    // nothing (a prefill chunk that does not reach the end of its prompt)
    kLogits,  // the logits row, to sample on the host (logprobs, min-p, banned ids)
    kDevice,  // one token id sampled where the logits are (samples_on_device() executors)
  };
  Kind kind = Kind::kNone;
  // kDevice: the contract of cuda::sample_rows (ops_cuda_attention.h): temperature 0 = greedy,
  // top_k 0 = off, top_p 1 = off, uniform in [0, 1) drawn from the request's seeded RNG.
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  double uniform = 0.0;
};

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
  // One step like execute(), returning only what `rows` (one per sequence) asks for: the
  // logits rows of kind kLogits, in order, as [n_logits, vocab] in `logits`, and the ids of the
  // rows of kind kDevice, in order, in `ids`. An executor on a GPU samples kDevice rows there,
  // so a decode step moves a few bytes per sequence to the host instead of a vocabulary row.
  // The default runs execute() and copies the kLogits rows; it accepts kDevice rows only if
  // samples_on_device() (which it is not).
  virtual void execute_rows(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                            std::span<const PageTable* const> pages,
                            std::span<const RowSample> rows, std::vector<float>& logits,
                            std::vector<int32_t>& ids);
  virtual bool samples_on_device() const { return false; }

  // Overlapped decode steps (EngineConfig::overlap_steps, docs/engine.md "Overlapped steps"):
  // the engine enqueues step N + 1 before it waits for step N, so the host's scheduling, input
  // packing and output handling run while the device computes.
  //
  // Whether launch() takes this step: a pure decode step (every sequence one token after a
  // non-empty context) whose rows are all kDevice, in a shape the executor runs without the host.
  virtual bool can_launch(std::span<const SeqSpan> seqs, std::span<const RowSample> rows) const;
  // Enqueues such a step and returns without waiting for it. feed is empty or one entry per
  // sequence: feed[i] >= 0 makes sequence i's input token the feed[i]-th id sampled by the step
  // launched just before this one (not collected yet, so the host does not know it; tokens[i]
  // is then ignored). At most two launched steps may be outstanding.
  virtual void launch(std::span<const int32_t> tokens, std::span<const int32_t> feed,
                      std::span<const SeqSpan> seqs, std::span<const PageTable* const> pages,
                      std::span<const RowSample> rows);
  // Waits for the oldest outstanding launched step; its sampled ids, one per sequence in order.
  virtual void collect(std::vector<int32_t>& ids);
  // With EngineConfig::profile: where the steps so far spent their time (a table per step
  // kind); empty when the executor does not profile.
  virtual std::string profile_report() const { return {}; }
  // Seconds the executor's calls have spent blocked waiting for the device so far (the CUDA
  // executor's output copies and stream synchronizations); 0 where the host computes the step.
  virtual double device_wait_seconds() const { return 0.0; }
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
