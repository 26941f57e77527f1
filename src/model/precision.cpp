// Parsing and naming of precisions. The table is the single list of valid spellings, so errors
// and help texts cannot drift from what the parser accepts.
#include "model/precision.h"

#include <array>

#include "core/error.h"

namespace qserve {

namespace {

struct Spelling {
  const char* text;
  Precision precision;
};

using W = WeightPrecision;
using K = KvPrecision;

// Canonical spellings first (name() returns these), then aliases.
constexpr std::array<Spelling, 11> kSpellings = {{
    {"w4a8kv4", {W::kW4A8PerChannel, K::kKv4}},
    {"w4a8kv8", {W::kW4A8PerChannel, K::kKv8}},
    {"w4a8kv4-g128", {W::kW4A8G128, K::kKv4}},
    {"w4a8kv8-g128", {W::kW4A8G128, K::kKv8}},
    {"w8a8kv8", {W::kW8A8, K::kKv8}},
    {"w8a8kv4", {W::kW8A8, K::kKv4}},
    {"w16a16kv16", {W::kW16A16, K::kKv16}},
    {"w16a16kv8", {W::kW16A16, K::kKv8}},
    {"w16a16kv4", {W::kW16A16, K::kKv4}},
    // Aliases: the group size written after the weight bits.
    {"w4a8g128kv4", {W::kW4A8G128, K::kKv4}},
    {"w4a8g128kv8", {W::kW4A8G128, K::kKv8}},
}};

}  // namespace

Precision Precision::parse(std::string_view s) {
  for (const Spelling& sp : kSpellings) {
    if (s == sp.text) return sp.precision;
  }
  std::string valid;
  for (const std::string& v : precision_spellings()) valid += (valid.empty() ? "" : ", ") + v;
  throw Error("unknown precision '" + std::string(s) + "'; valid precisions: " + valid);
}

std::string Precision::name() const {
  for (const Spelling& sp : kSpellings) {
    if (sp.precision == *this) return sp.text;
  }
  std::string w;
  switch (weights) {
    case W::kW16A16:
      w = "w16a16";
      break;
    case W::kW8A8:
      w = "w8a8";
      break;
    case W::kW4A8PerChannel:
      w = "w4a8";
      break;
    case W::kW4A8G128:
      w = "w4a8";
      break;
  }
  w += "kv" + std::to_string(static_cast<int>(kv));
  if (weights == W::kW4A8G128) w += "-g128";
  return w;
}

std::vector<std::string> precision_spellings() {
  std::vector<std::string> out;
  for (const Spelling& sp : kSpellings) out.emplace_back(sp.text);
  return out;
}

}  // namespace qserve
