// Per-request sampling: greedy (temperature 0), temperature, top-k, top-p, min-p, seeded, with
// banned ids (min_tokens) and optional logprobs. Parameters and stop settings of one request.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace qserve {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax, lowest id wins ties); < 1e-5 counts as 0
  int top_k = 0;             // 0 = off (-1 is accepted as off too, vLLM's spelling)
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off; keep tokens with p >= min_p * p_max
  uint64_t seed = 0;         // every request is seeded: equal params + logits give equal tokens
  int64_t max_tokens = 16;
  // EOS and stop_token_ids cannot be sampled before this many tokens; stop strings are not
  // checked before it either.
  int64_t min_tokens = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  bool logprobs = false;  // return the sampled token's logprob
  int top_logprobs = 0;   // and this many alternatives (0..20; needs logprobs)
};

// Validates params; throws qserve::Error naming the offending field.
void validate(const SamplingParams& p);

inline constexpr int kMaxTopLogprobs = 20;

struct TokenLogprob {
  int32_t id;
  float logprob;
};

// logprob/top are filled only when SamplingParams::logprobs is set. They are "raw" logprobs:
// log-softmax of the logits as the model produced them (temperature 1, before banning and any
// top-k/top-p/min-p filtering), vLLM's default. top is sorted by logprob, best first (ties: lower
// id first); it may or may not contain the sampled id.
struct SampledToken {
  int32_t id = 0;
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

// One per request: it owns the request's RNG, so a seeded request draws the same tokens whatever
// else shares its batch. Not thread-safe (one request is sampled by one thread at a time).
class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // Picks a token from one row of logits. banned: ids that must not be sampled this step (EOS and
  // stop ids before min_tokens); may be empty; ids outside the vocabulary are ignored. Throws
  // qserve::Error if every id is banned. NaN logits are never sampled; if no logit is finite the
  // pick is the argmax (lowest id on ties) of the allowed ids.
  SampledToken sample(std::span<const float> logits, std::span<const int32_t> banned = {});

  // Whether this request's next token may be sampled by a device sampler (the contract of
  // cuda::sample_rows): not with logprobs or min-p, whose inputs only the host path computes.
  bool device_eligible() const { return !p_.logprobs && p_.min_p == 0.0f; }
  // The device sampler's parameters for the next token: temperature (0 when greedy), top-k
  // (0 = off), top-p, and one uniform in [0, 1) from this request's RNG (none when greedy), so
  // seeded requests stay reproducible on a device. The pick follows the device contract
  // (integer weights in double), not sample()'s float arithmetic: the same seed may pick a
  // different token on the host and on a device.
  struct DeviceRow {
    float temperature;
    int32_t top_k;
    float top_p;
    double uniform;
  };
  DeviceRow next_device_row();

 private:
  struct Cand {
    float logit;
    int32_t id;
  };
  int32_t draw(std::span<const float> logits, float max_logit);
  float weight(float logit, float max_logit) const;

  SamplingParams p_;
  float inv_temp_ = 0.0f;
  std::mt19937_64 rng_;
  // Scratch reused across steps so that a decode step does not allocate.
  std::vector<float> masked_;
  std::vector<Cand> cand_;
};

// Index of the largest logit (lowest id on ties; NaN never wins unless every logit is NaN).
int32_t argmax(std::span<const float> logits);

}  // namespace qserve
