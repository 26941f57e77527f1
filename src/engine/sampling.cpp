#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace qserve {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// vLLM's _SAMPLING_EPS: a temperature this small would overflow exp(); it means greedy.
constexpr float kGreedyEps = 1e-5f;

std::string num(double v) {
  std::string s = std::to_string(v);
  // to_string prints 6 decimals; trim the zeros so "0.500000" reads "0.5".
  if (s.find('.') != std::string::npos) {
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  return s;
}

// The lowest id that is not banned (used when no logit is finite). Throws if all are banned.
int32_t first_allowed(size_t n, std::span<const int32_t> banned) {
  for (size_t i = 0; i < n; ++i) {
    if (std::find(banned.begin(), banned.end(), static_cast<int32_t>(i)) == banned.end())
      return static_cast<int32_t>(i);
  }
  throw Error("sampling: every token id is banned");
}

// A uniform double in [0, 1) from the top 53 bits: unlike std::uniform_real_distribution its
// result is the same with every standard library, so seeded outputs are portable.
double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

}  // namespace

void validate(const SamplingParams& p) {
  check(std::isfinite(p.temperature) && p.temperature >= 0.0f,
        "sampling: temperature must be a finite number >= 0 (got " + num(p.temperature) + ")");
  check(p.top_k >= -1,
        "sampling: top_k must be >= 0, or -1 for off (got " + std::to_string(p.top_k) + ")");
  check(p.top_p > 0.0f && p.top_p <= 1.0f,
        "sampling: top_p must be in (0, 1] (got " + num(p.top_p) + ")");
  check(p.min_p >= 0.0f && p.min_p <= 1.0f,
        "sampling: min_p must be in [0, 1] (got " + num(p.min_p) + ")");
  check(p.max_tokens >= 1,
        "sampling: max_tokens must be >= 1 (got " + std::to_string(p.max_tokens) + ")");
  check(p.min_tokens >= 0 && p.min_tokens <= p.max_tokens,
        "sampling: min_tokens must be in [0, max_tokens] (got " + std::to_string(p.min_tokens) +
            " with max_tokens " + std::to_string(p.max_tokens) + ")");
  for (size_t i = 0; i < p.stop.size(); ++i)
    check(!p.stop[i].empty(), "sampling: stop[" + std::to_string(i) + "] is an empty string");
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i)
    check(p.stop_token_ids[i] >= 0, "sampling: stop_token_ids[" + std::to_string(i) +
                                        "] must be >= 0 (got " +
                                        std::to_string(p.stop_token_ids[i]) + ")");
  check(p.top_logprobs >= 0 && p.top_logprobs <= kMaxTopLogprobs,
        "sampling: top_logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) + "] (got " +
            std::to_string(p.top_logprobs) + ")");
  // As in the OpenAI API: alternatives without the sampled token's own logprob make no sense.
  check(p.top_logprobs == 0 || p.logprobs, "sampling: top_logprobs needs logprobs = true");
}

int32_t argmax(std::span<const float> logits) {
  check(!logits.empty(), "argmax of empty logits");
  // NaN is never picked: start from the first number (a row of NaNs gives 0).
  size_t best = 0;
  while (best < logits.size() && std::isnan(logits[best])) ++best;
  if (best == logits.size()) return 0;
  for (size_t i = best + 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  validate(p);
  inv_temp_ = p.temperature > 0.0f ? 1.0f / p.temperature : 0.0f;
}

namespace {

// Above this k, a heap scan loses to nth_element.
constexpr size_t kHeapTopK = 1024;
// top-p without top-k sorts a prefix of this size first and grows it only when the prefix does
// not hold top_p of the mass (a flat distribution): rarely a full sort of the vocabulary.
constexpr size_t kTopPFirstPrefix = 1024;

}  // namespace

float Sampler::weight(float logit, float mx) const {
  // Unnormalized probability exp((l - max) / T), in float: exp over a 128k vocabulary is the
  // sampler's main cost, and float is plenty for a probability ratio in (0, 1].
  return std::exp((logit - mx) * inv_temp_);
}

int32_t Sampler::draw(std::span<const float> l, float mx) {
  const size_t n = l.size();
  // The candidate order: higher logit first, lower id on ties (a strict total order, so partial
  // selection picks exactly the set a full sort would).
  auto better = [](const Cand& a, const Cand& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  // min-p first: p_i / p_max = exp((l_i - max) / T) does not depend on which other tokens
  // survive, so it commutes with top-k, and it is one compare per logit.
  const float min_logit = p_.min_p > 0.0f ? mx + p_.temperature * std::log(p_.min_p)
                                          : -std::numeric_limits<float>::infinity();
  auto eligible = [&](float li) { return li > kNegInf && li >= min_logit; };
  const bool top_p = p_.top_p < 1.0f;
  const size_t k = p_.top_k > 0 ? static_cast<size_t>(p_.top_k) : 0;
  cand_.clear();
  bool sorted = false;
  if (k > 0 && k <= kHeapTopK) {
    // Small top-k: one pass keeping the k best in a heap whose front is the worst kept; most
    // logits fail the first compare.
    for (size_t i = 0; i < n; ++i) {
      const float li = l[i];
      if (!eligible(li)) continue;
      const Cand c{li, static_cast<int32_t>(i)};
      if (cand_.size() < k) {
        cand_.push_back(c);
        std::push_heap(cand_.begin(), cand_.end(), better);
      } else if (better(c, cand_.front())) {
        std::pop_heap(cand_.begin(), cand_.end(), better);
        cand_.back() = c;
        std::push_heap(cand_.begin(), cand_.end(), better);
      }
    }
    std::sort(cand_.begin(), cand_.end(), better);
    sorted = true;
  } else {
    for (size_t i = 0; i < n; ++i) {
      if (eligible(l[i])) cand_.push_back({l[i], static_cast<int32_t>(i)});
    }
    if (k > 0) {
      if (k < cand_.size()) {
        std::nth_element(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k - 1),
                         cand_.end(), better);
        cand_.resize(k);
      }
      std::sort(cand_.begin(), cand_.end(), better);
      sorted = true;
    }
  }
  // Candidates are walked in (logit desc, id asc) order under top-k or top-p, else in id order;
  // either way the order does not depend on the standard library, so seeded draws are portable.
  // The total mass is summed in that walk order, except top-p without top-k, which sums in id
  // order before deciding how much to sort.
  double total = 0.0;
  for (const Cand& c : cand_) total += weight(c.logit, mx);
  size_t keep = cand_.size();
  if (top_p) {
    // Keep the smallest prefix whose mass reaches top_p (vLLM keeps a token while the mass
    // before it is < top_p, which is the same set).
    const double target = static_cast<double>(p_.top_p) * total;
    size_t done = 0;  // cand_[0, done) is sorted and better than everything after it
    size_t prefix = sorted ? cand_.size() : std::min(kTopPFirstPrefix, cand_.size());
    double cum = 0.0;
    for (;;) {
      if (!sorted) {
        auto mid = cand_.begin() + static_cast<std::ptrdiff_t>(prefix);
        if (prefix < cand_.size()) {
          std::nth_element(cand_.begin() + static_cast<std::ptrdiff_t>(done), mid, cand_.end(),
                           better);
        }
        std::sort(cand_.begin() + static_cast<std::ptrdiff_t>(done), mid, better);
      }
      size_t i = done;
      for (; i < prefix; ++i) {
        cum += weight(cand_[i].logit, mx);
        if (cum >= target) break;
      }
      if (i < prefix) {
        keep = i + 1;
        break;
      }
      if (prefix == cand_.size()) break;  // rounding: everything is kept
      done = prefix;
      prefix = std::min(prefix * 4, cand_.size());
    }
    total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += weight(cand_[i].logit, mx);
  }
  double r = uniform01(rng_) * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= weight(cand_[i].logit, mx);
    if (r < 0.0) return cand_[i].id;
  }
  return cand_[keep - 1].id;  // rounding left r >= 0 after the last candidate
}

Sampler::DeviceRow Sampler::next_device_row() {
  if (p_.temperature < kGreedyEps) return {0.0f, 0, 1.0f, 0.0};
  return {p_.temperature, p_.top_k > 0 ? p_.top_k : 0, p_.top_p, uniform01(rng_)};
}

SampledToken Sampler::sample(std::span<const float> logits, std::span<const int32_t> banned) {
  check(!logits.empty(), "sampling: empty logits");
  const size_t n = logits.size();
  // Banned ids become -inf in a copy; banning happens only before min_tokens, so the copy is rare.
  std::span<const float> l = logits;
  if (!banned.empty()) {
    masked_.assign(logits.begin(), logits.end());
    for (const int32_t id : banned) {
      if (id >= 0 && static_cast<size_t>(id) < n) masked_[static_cast<size_t>(id)] = kNegInf;
    }
    if (banned.size() >= n) (void)first_allowed(n, banned);  // throws if all are banned
    l = masked_;
  }

  SampledToken out;
  out.id = argmax(l);
  const float mx = l[static_cast<size_t>(out.id)];
  const bool greedy = p_.temperature < kGreedyEps;
  if (!(mx > kNegInf)) {
    // Nothing finite to sample from (all -inf/NaN): deterministic fallback, never a throw in the
    // decode loop.
    out.id = first_allowed(n, banned);
  } else if (!greedy && std::isfinite(mx)) {
    out.id = draw(l, mx);
  }
  // (An infinite max logit under sampling would make exp() NaN: the argmax is the only sensible
  // pick, which out.id already is.)

  if (p_.logprobs) {
    // Raw logprobs: the unmasked logits at temperature 1 (see SampledToken).
    const int32_t top = argmax(logits);
    const double m = logits[static_cast<size_t>(top)];
    double sum = 0.0;
    for (const float li : logits) sum += std::exp(li - static_cast<float>(m));  // float exp: speed
    const double lse = m + std::log(sum);
    out.logprob =
        static_cast<float>(static_cast<double>(logits[static_cast<size_t>(out.id)]) - lse);
    const size_t want = std::min(static_cast<size_t>(p_.top_logprobs), n);
    if (want > 0) {
      // One pass with a small sorted buffer (want <= 20): most logits fail the first compare.
      std::vector<int32_t> best;
      best.reserve(want + 1);
      auto better = [&](int32_t a, int32_t b) {
        const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
        return la > lb || (la == lb && a < b);
      };
      for (size_t i = 0; i < n; ++i) {
        const int32_t id = static_cast<int32_t>(i);
        if (std::isnan(logits[i])) continue;
        if (best.size() == want && !better(id, best.back())) continue;
        best.insert(std::upper_bound(best.begin(), best.end(), id, better), id);
        if (best.size() > want) best.pop_back();
      }
      out.top.reserve(best.size());
      for (const int32_t id : best) {
        out.top.push_back(
            {id, static_cast<float>(static_cast<double>(logits[static_cast<size_t>(id)]) - lse)});
      }
    }
  }
  return out;
}

}  // namespace qserve
