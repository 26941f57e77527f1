// QServe zoo packing vectors (tests/data/qserve/packing_vectors.json, written by
// tools/qserve_reference/gen_reference.py with its own packer): from the integer codes and
// scales, quant::to_qserve reproduces the stored qweight / s1 / s2 bytes exactly, and the
// checkpoint unpackers recover the codes and scales.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/qserve_format.h"
#include "test_paths.h"

namespace qserve {
namespace {

using nlohmann::json;

json load_vectors() {
  const std::string path = test::source_dir() + "/tests/data/qserve/packing_vectors.json";
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

int hexval(char c) {
  return c <= '9' ? c - '0' : c - 'a' + 10;
}

std::vector<uint8_t> hex_bytes(const std::string& h) {
  std::vector<uint8_t> out(h.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<uint8_t>(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]));
  }
  return out;
}

std::vector<uint16_t> hex_u16(const std::string& h) {
  const std::vector<uint8_t> b = hex_bytes(h);
  std::vector<uint16_t> out(b.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8));
  }
  return out;
}

std::vector<int8_t> to_i8(const std::vector<uint8_t>& b) {
  return std::vector<int8_t>(b.begin(), b.end());
}

std::vector<uint8_t> codes_of(const json& rows) {
  std::vector<uint8_t> q;
  for (const auto& r : rows) {
    for (char c : r.get<std::string>()) q.push_back(static_cast<uint8_t>(hexval(c)));
  }
  return q;
}

TEST(ZooPacking, PerChannelBytesAndCodesRoundTrip) {
  const json d = load_vectors();
  ASSERT_EQ(d["format_version"], 1);
  for (const json& v : d["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    const int64_t n = v["N"], k = v["K"];
    const json& pc = v["per_channel"];
    quant::W4PerChannel w;
    w.n = n;
    w.k = k;
    w.q = codes_of(pc["codes_hex_rows"]);
    w.s1_scales = hex_u16(pc["s1_scales_hex"]);
    w.s1_szeros = hex_u16(pc["s1_szeros_hex"]);
    ASSERT_EQ(static_cast<int64_t>(w.q.size()), n * k);
    const quant::QServeW4Tensors t = quant::to_qserve(w);
    const std::vector<uint8_t> want = hex_bytes(pc["qweight_hex"]);
    EXPECT_EQ(t.qweight, want);
    EXPECT_EQ(t.s1_scales, w.s1_scales);
    EXPECT_EQ(t.s1_szeros, w.s1_szeros);
    const quant::W4PerChannel back =
        quant::w4_per_channel_from_qserve(want, w.s1_scales, w.s1_szeros, n, k);
    EXPECT_EQ(back.q, w.q);
    EXPECT_EQ(back.s1_scales, w.s1_scales);
    EXPECT_EQ(back.s1_szeros, w.s1_szeros);
  }
}

TEST(ZooPacking, G128BytesAndCodesRoundTrip) {
  const json d = load_vectors();
  for (const json& v : d["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    const int64_t n = v["N"], k = v["K"], g = k / quant::kGroupSize;
    const json& gj = v["g128"];
    quant::W4G128 w;
    w.n = n;
    w.k = k;
    w.q = codes_of(gj["codes_hex_rows"]);
    w.s1_scales = hex_u16(gj["s1_scales_hex"]);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < g; ++j) {
        const int s2 = gj["s2_logical_NxG"][static_cast<size_t>(r)][static_cast<size_t>(j)];
        const int z = gj["zeros_logical_NxG"][static_cast<size_t>(r)][static_cast<size_t>(j)];
        w.s2_scales.push_back(static_cast<int8_t>(s2));
        w.s2_zeros.push_back(static_cast<int8_t>(static_cast<uint8_t>((-z * s2) & 0xff)));
      }
    }
    const quant::QServeW4Tensors t = quant::to_qserve(w);
    const std::vector<uint8_t> want_q = hex_bytes(gj["qweight_hex"]);
    const std::vector<int8_t> want_s2 = to_i8(hex_bytes(gj["s2_scales_hex"]));
    const std::vector<int8_t> want_z2 = to_i8(hex_bytes(gj["s2_zeros_hex"]));
    EXPECT_EQ(t.qweight, want_q);
    EXPECT_EQ(t.s1_scales, w.s1_scales);
    EXPECT_EQ(t.s2_scales, want_s2);
    EXPECT_EQ(t.s2_zeros, want_z2);
    const quant::W4G128 back =
        quant::w4_g128_from_qserve(want_q, w.s1_scales, want_s2, want_z2, n, k);
    EXPECT_EQ(back.q, w.q);
    EXPECT_EQ(back.s2_scales, w.s2_scales);
    EXPECT_EQ(back.s2_zeros, w.s2_zeros);
  }
}

}  // namespace
}  // namespace qserve
