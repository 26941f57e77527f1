// The scheduler's view of one request: its tokens, how many of them are in the KV cache, its
// pages and its state. No sampling, text or device state (those live in the engine's request).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/block_manager.h"

namespace qserve {

enum class SeqStatus { kWaiting, kRunning, kFinished };

struct Sequence {
  int64_t id = 0;
  int64_t arrival = 0;              // admission order (FCFS); smaller is older
  std::vector<int32_t> tokens;      // prompt followed by the generated tokens
  int64_t num_prompt = 0;
  int64_t max_total_len = 0;        // prompt + max new tokens, capped at the model's context
  int64_t num_computed = 0;         // leading tokens whose K/V are in the cache
  PageTable pages;
  SeqStatus status = SeqStatus::kWaiting;
  int64_t num_preemptions = 0;

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t num_output() const { return num_tokens() - num_prompt; }
  // Tokens still to run through the model before the next sample.
  int64_t num_pending() const { return num_tokens() - num_computed; }
};

}  // namespace qserve
