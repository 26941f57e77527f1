// Precision of a model instance: an attribute of its linear weights (and so of their input
// activations) and of its KV cache, not a model class (docs/architecture.md, principle 2).
//
// Spellings follow QServe's `--precision` values (qserve-compat.md §1), e.g. "w4a8kv4"; a
// "-g128" suffix (or "g128" after "w4a8") selects progressive group quantization with groups of
// 128. "w16a16kv16" is the fp32 reference forward. docs/precision.md describes each precision.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qserve {

// What the decoder layers' linears (QKV, O, gate_up, down) hold. Embeddings and lm_head always
// stay fp32.
enum class WeightPrecision : uint8_t {
  kW16A16,          // fp32 weights and activations (the reference)
  kW8A8,            // int8 per-channel symmetric weights, int8 per-token activations
  kW4A8PerChannel,  // uint4 per-channel asymmetric weights, int8 per-token activations (+ sums)
  kW4A8G128,        // progressive uint4 g128 weights (int8 per channel, uint4 per group of 128)
};

// How the KV cache stores K (after RoPE) and V.
enum class KvPrecision : uint8_t {
  kKv16 = 16,  // contiguous fp32 cache (the reference)
  kKv8 = 8,    // QServe's paged KV8: asymmetric uint8 per (token, KV head)
  kKv4 = 4,    // QServe's paged KV4: asymmetric uint4 per (token, KV head)
};

struct Precision {
  WeightPrecision weights = WeightPrecision::kW16A16;
  KvPrecision kv = KvPrecision::kKv16;

  // Parses one of precision_spellings(); throws qserve::Error listing them otherwise.
  static Precision parse(std::string_view s);
  // The canonical spelling ("w4a8kv4-g128", ...). Combinations without a QServe spelling (e.g.
  // W4A8 with KV16, which tests build directly) get the same pattern: "w4a8kv16".
  std::string name() const;
  // True when the decoder linears take int8 activations.
  bool quantized_activations() const { return weights != WeightPrecision::kW16A16; }
  bool quantized_kv() const { return kv != KvPrecision::kKv16; }

  bool operator==(const Precision&) const = default;
};

// Every accepted spelling, canonical ones first then aliases, in a stable order.
std::vector<std::string> precision_spellings();

}  // namespace qserve
