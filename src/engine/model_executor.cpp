// The defaults of ModelExecutor's optional methods.
#include "engine/model_executor.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace qserve {

void ModelExecutor::score(std::span<const int32_t>, std::vector<float>&) {
  throw Error("this executor (" + describe() + ") cannot score sequences");
}

void ModelExecutor::execute_rows(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                                 std::span<const PageTable* const> pages,
                                 std::span<const RowSample> rows, std::vector<float>& logits,
                                 std::vector<int32_t>& ids) {
  check(rows.size() == seqs.size(), "execute_rows: one RowSample per sequence is needed");
  ids.clear();
  const bool all_logits = std::all_of(rows.begin(), rows.end(), [](const RowSample& r) {
    return r.kind == RowSample::Kind::kLogits;
  });
  if (all_logits) {  // the CPU engine's usual step: no copy
    execute(tokens, seqs, pages, logits);
    return;
  }
  for (const RowSample& r : rows) {
    check(r.kind != RowSample::Kind::kDevice,
          "execute_rows: this executor (" + describe() + ") does not sample on a device");
  }
  std::vector<float> all;
  execute(tokens, seqs, pages, all);
  const size_t vocab = static_cast<size_t>(vocab_size());
  size_t kept = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].kind != RowSample::Kind::kLogits) continue;
    if (kept != i) std::memmove(all.data() + kept * vocab, all.data() + i * vocab, vocab * 4);
    ++kept;
  }
  all.resize(kept * vocab);
  logits = std::move(all);
}

bool ModelExecutor::can_launch(std::span<const SeqSpan>, std::span<const RowSample>) const {
  return false;
}

void ModelExecutor::launch(std::span<const int32_t>, std::span<const int32_t>,
                           std::span<const SeqSpan>, std::span<const PageTable* const>,
                           std::span<const RowSample>) {
  throw Error("this executor (" + describe() + ") cannot launch steps asynchronously");
}

void ModelExecutor::collect(std::vector<int32_t>&) {
  throw Error("this executor (" + describe() + ") has no launched step to collect");
}

}  // namespace qserve
