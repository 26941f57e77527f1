// Shared helpers of the CUDA parity harness (tests/parity/*): every CUDA op is checked against
// its CPU reference (the specification) on the same seeded inputs.
//
//  - QSERVE_PARITY_REQUIRE_GPU(): GTEST_SKIP when no CUDA device is visible, so the binary runs
//    harmlessly (exit 0) on a machine without a GPU.
//  - ParityRng: seeded inputs (uniform / normal floats, full-range int8, int4 codes).
//  - poison(): fills a device output with 0xFF bytes before a launch (NaN for fp16/fp32, -1 for
//    integers), so an element the kernel forgets to write cannot pass by matching a stale zero.
//  - compare_exact / compare_close: compare and print one report line per case
//      PARITY op=<op> shape=<...> max_abs_err=<..> max_rel_err=<..> tol=<..> result=PASS|FAIL
//    and return a ParityResult whose `pass` the test asserts (EXPECT_PARITY). NaN/Inf in the
//    output is always a failure (unless the reference has the same non-finite value at that
//    element, which compare_close reports but compare_exact treats bitwise).
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/cuda/cuda_device.h"
#include "core/half.h"

namespace qserve::parity {

// Skips the current test when there is no GPU (device_count() never throws).
#define QSERVE_PARITY_REQUIRE_GPU()                     \
  do {                                                  \
    if (::qserve::cuda::device_count() == 0) {          \
      GTEST_SKIP() << ::qserve::cuda::device_summary(); \
    }                                                   \
  } while (0)

// "M=7 N=4096 K=4096" from a list of (name, value) pairs.
inline std::string shape_str(std::initializer_list<std::pair<const char*, int64_t>> dims) {
  std::string s;
  for (const auto& [name, v] : dims) {
    if (!s.empty()) s += ',';
    s += name;
    s += '=';
    s += std::to_string(v);
  }
  return s;
}

class ParityRng {
 public:
  explicit ParityRng(uint64_t seed) : gen_(seed) {}

  std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(gen_);
    return v;
  }
  std::vector<float> normal(size_t n, float mean = 0.0f, float stddev = 1.0f) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(n);
    for (float& x : v) x = d(gen_);
    return v;
  }
  // Integers uniform in [lo, hi] (inclusive), e.g. int8 codes in [-127, 127].
  template <typename T>
  std::vector<T> ints(size_t n, int64_t lo, int64_t hi) {
    std::uniform_int_distribution<int64_t> d(lo, hi);
    std::vector<T> v(n);
    for (T& x : v) x = static_cast<T>(d(gen_));
    return v;
  }
  // fp16 bit patterns of uniform values (the value is representable exactly afterwards).
  std::vector<uint16_t> fp16_uniform(size_t n, float lo, float hi) {
    std::vector<uint16_t> v(n);
    const std::vector<float> f = uniform(n, lo, hi);
    for (size_t i = 0; i < n; ++i) v[i] = float_to_fp16(f[i]);
    return v;
  }
  // Fast variants for the large weight matrices (hundreds of millions of elements), from a
  // splitmix64 stream seeded by this generator: two 32-bit draws per 64-bit output, mapped by
  // multiply-shift (a bias below 2^-24, irrelevant for test data).
  template <typename T>
  std::vector<T> fast_ints(size_t n, int64_t lo, int64_t hi) {
    const uint64_t range = static_cast<uint64_t>(hi - lo + 1);
    std::vector<T> v(n);
    uint64_t state = gen_();
    for (size_t i = 0; i < n; i += 2) {
      const uint64_t z = splitmix64(state);
      v[i] = static_cast<T>(lo + static_cast<int64_t>(((z & 0xffffffffu) * range) >> 32));
      if (i + 1 < n)
        v[i + 1] = static_cast<T>(lo + static_cast<int64_t>(((z >> 32) * range) >> 32));
    }
    return v;
  }
  std::vector<float> fast_uniform(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    uint64_t state = gen_();
    const float span = hi - lo;
    for (size_t i = 0; i < n; i += 2) {
      const uint64_t z = splitmix64(state);
      v[i] = lo + span * static_cast<float>(z & 0xffffffu) * 0x1p-24f;
      if (i + 1 < n) v[i + 1] = lo + span * static_cast<float>((z >> 32) & 0xffffffu) * 0x1p-24f;
    }
    return v;
  }
  std::mt19937_64& engine() { return gen_; }

 private:
  static uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::mt19937_64 gen_;
};

// Fill `bytes` of device memory with 0xFF and wait, so a missing write is visible as NaN / -1.
inline void poison(void* dev, size_t bytes, cudaStream_t stream = nullptr) {
  if (bytes == 0) return;
  ASSERT_EQ(cudaMemsetAsync(dev, 0xFF, bytes, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
}

struct ParityResult {
  bool pass = true;
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;
  int64_t mismatches = 0;
  int64_t first_bad = -1;  // index of the first failing element (-1: none)
  std::string first_bad_desc;
};

inline void print_report(const std::string& op, const std::string& shape, const ParityResult& r,
                         const std::string& tol) {
  std::printf("PARITY op=%s shape=%s max_abs_err=%.6g max_rel_err=%.6g tol=%s result=%s\n",
              op.c_str(), shape.c_str(), r.max_abs_err, r.max_rel_err, tol.c_str(),
              r.pass ? "PASS" : "FAIL");
  if (!r.pass) {
    std::printf("PARITY   op=%s mismatches=%" PRId64 " first_bad=%" PRId64 " %s\n", op.c_str(),
                r.mismatches, r.first_bad, r.first_bad_desc.c_str());
  }
  std::fflush(stdout);
}

// Exact comparison of integer (or bitwise-comparable) outputs.
template <typename T>
ParityResult compare_exact(const std::string& op, const std::string& shape, std::span<const T> got,
                           std::span<const T> want) {
  static_assert(std::is_integral_v<T>, "compare_exact is for integer outputs");
  ParityResult r;
  if (got.size() != want.size()) {
    r.pass = false;
    r.first_bad_desc =
        "size mismatch got=" + std::to_string(got.size()) + " want=" + std::to_string(want.size());
    print_report(op, shape, r, "exact");
    return r;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::abs(static_cast<double>(got[i]) - static_cast<double>(want[i]));
    if (d > 0) {
      r.max_abs_err = std::max(r.max_abs_err, d);
      const double rel = d / std::max(1.0, std::abs(static_cast<double>(want[i])));
      r.max_rel_err = std::max(r.max_rel_err, rel);
      if (r.first_bad < 0) {
        r.first_bad = static_cast<int64_t>(i);
        r.first_bad_desc = "got=" + std::to_string(static_cast<int64_t>(got[i])) +
                           " want=" + std::to_string(static_cast<int64_t>(want[i]));
      }
      ++r.mismatches;
      r.pass = false;
    }
  }
  print_report(op, shape, r, "exact");
  return r;
}

template <typename T>
ParityResult compare_exact(const std::string& op, const std::string& shape,
                           const std::vector<T>& got, const std::vector<T>& want) {
  return compare_exact<T>(op, shape, std::span<const T>(got), std::span<const T>(want));
}

// |got - want| <= abs_tol + rel_tol * |want| for every element; NaN/Inf in `got` fails unless
// `want` holds the identical non-finite value. max_rel_err = |got-want| / max(|want|, 1e-30).
inline ParityResult compare_close(const std::string& op, const std::string& shape,
                                  std::span<const float> got, std::span<const float> want,
                                  double abs_tol, double rel_tol) {
  ParityResult r;
  char tol[96];
  std::snprintf(tol, sizeof(tol), "abs:%.3g+rel:%.3g", abs_tol, rel_tol);
  if (got.size() != want.size()) {
    r.pass = false;
    r.first_bad_desc =
        "size mismatch got=" + std::to_string(got.size()) + " want=" + std::to_string(want.size());
    print_report(op, shape, r, tol);
    return r;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i];
    const double w = want[i];
    bool bad = false;
    if (!std::isfinite(g) || !std::isfinite(w)) {
      // Equal infinities are a match; NaN never is (a poisoned, unwritten element is NaN).
      bad = !(std::isinf(g) && std::isinf(w) && g == w);
      if (bad) r.max_abs_err = std::numeric_limits<double>::infinity();
    } else {
      const double d = std::abs(g - w);
      r.max_abs_err = std::max(r.max_abs_err, d);
      r.max_rel_err = std::max(r.max_rel_err, d / std::max(std::abs(w), 1e-30));
      bad = d > abs_tol + rel_tol * std::abs(w);
    }
    if (bad) {
      if (r.first_bad < 0) {
        r.first_bad = static_cast<int64_t>(i);
        char buf[128];
        std::snprintf(buf, sizeof(buf), "got=%.9g want=%.9g", g, w);
        r.first_bad_desc = buf;
      }
      ++r.mismatches;
      r.pass = false;
    }
  }
  print_report(op, shape, r, tol);
  return r;
}

inline ParityResult compare_close(const std::string& op, const std::string& shape,
                                  const std::vector<float>& got, const std::vector<float>& want,
                                  double abs_tol, double rel_tol) {
  return compare_close(op, shape, std::span<const float>(got), std::span<const float>(want),
                       abs_tol, rel_tol);
}

// fp16 bit patterns -> fp32 values (for comparing fp16 outputs with compare_close).
inline std::vector<float> fp16_to_float_vec(std::span<const uint16_t> h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = fp16_to_float(h[i]);
  return f;
}
inline std::vector<float> bf16_to_float_vec(std::span<const uint16_t> h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = bf16_to_float(h[i]);
  return f;
}

// Asserts a ParityResult passed, naming the op, shape and first bad element on failure.
#define EXPECT_PARITY(result, op, shape)                                   \
  EXPECT_TRUE((result).pass) << "op=" << (op) << " shape=" << (shape)      \
                             << " mismatches=" << (result).mismatches      \
                             << " first_bad=" << (result).first_bad << " " \
                             << (result).first_bad_desc

}  // namespace qserve::parity
