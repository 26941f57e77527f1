// The CPU executor: LlamaModel::forward over a KvCache whose paged variant takes the engine's
// page tables.
#include <string>

#include "core/error.h"
#include "engine/model_executor.h"
#include "model/llama_model.h"

namespace qserve {

namespace {

class CpuExecutor final : public ModelExecutor {
 public:
  CpuExecutor(const LlamaModel& model, int64_t num_pages, int64_t num_slots, int64_t max_model_len)
      : model_(model),
        num_pages_(num_pages),
        cache_(make(model, num_pages, num_slots, max_model_len)) {}

  int64_t vocab_size() const override { return model_.config().vocab_size; }
  int64_t num_slots() const override { return cache_.slots(); }
  int64_t num_pages() const override { return num_pages_; }

  void execute(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
               std::span<const PageTable* const> pages, std::vector<float>& logits) override {
    check(pages.size() == seqs.size(), "executor: one page table per sequence expected");
    if (PagedKvCache* paged = cache_.paged()) {
      for (size_t i = 0; i < seqs.size(); ++i) paged->set_page_table(seqs[i].kv_slot, *pages[i]);
    }
    logits = model_.forward(tokens, seqs, cache_, LogitsMode::LastPerSequence);
  }

  void score(std::span<const int32_t> tokens, std::vector<float>& logits) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    check(n > 0, "score: empty sequence");
    KvCache scratch = model_.make_cache(1, n);
    const SeqSpan s{0, n, 0, 0};
    logits = model_.forward(tokens, {&s, 1}, scratch, LogitsMode::AllTokens);
  }

  std::string describe() const override {
    return "cpu, " + model_.precision().name() + ", " + std::to_string(num_pages_) + " KV pages, " +
           std::to_string(cache_.slots()) + " slots";
  }

 private:
  static KvCache make(const LlamaModel& model, int64_t num_pages, int64_t num_slots,
                      int64_t max_model_len) {
    const ModelConfig& cfg = model.config();
    const KvPrecision kv = model.precision().kv;
    if (kv == KvPrecision::kKv16) return model.make_cache(num_slots, max_model_len);
    const quant::KvBits bits = kv == KvPrecision::kKv8 ? quant::KvBits::k8 : quant::KvBits::k4;
    return KvCache(PagedKvCache::with_external_pages(
        bits, cfg.num_layers, num_pages, num_slots, max_model_len, cfg.num_kv_heads, cfg.head_dim));
  }

  const LlamaModel& model_;
  int64_t num_pages_;
  KvCache cache_;
};

}  // namespace

std::unique_ptr<ModelExecutor> make_cpu_executor(const LlamaModel& model, int64_t num_pages,
                                                 int64_t num_slots, int64_t max_model_len) {
  // Fail at engine creation, not at the first step.
  check(!model.device_synthetic_seed().has_value(),
        "cpu executor: this synthetic model's weights exist only on the GPU; use --device cuda "
        "(or a model with host weights)");
  return std::make_unique<CpuExecutor>(model, num_pages, num_slots, max_model_len);
}

}  // namespace qserve
