// Synthetic fake-quant dumps for the converter tests, built in-test from a small HF model and
// written with our torch writer (formats/torch_writer.h), in the styles of
//   LMQuant          scale.pt fp16 (N,1,1,1) / (N,1,G,1): .scale.0, .scale.1, .zero (integer z)
//   DeepCompressor   scale.pt fp32 (N,1) / (N,G): .scale.0, .scale.1, and .zero (PreScale) or
//                    .scaled_zero (PostScale)
// model.pt holds the HF state dict in fp16 with every decoder linear replaced by its fake-quant
// weight: per-channel fp16(s1 * (Q - z)) or fp16(s1 * Q - z~), g128 fp16(s1 * w8) with
// w8 = (Q - z) * s2 or Q * s2 - z~ (quant/rtn_quantizers.h's grids, qoq-algorithm.md §2, §4).
// The codes and scales the dump was made from are kept, so a test can check that the converter
// recovers them exactly; tests corrupt the dump's maps before writing it.
#pragma once

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/half.h"
#include "formats/safetensors.h"
#include "formats/torch_writer.h"
#include "quant/rtn_quantizers.h"
#include "quant/weights.h"
#include "test_paths.h"

namespace qserve::test {

enum class DumpStyle {
  kLmquant,             // .zero, integer z in [0, 15]
  kLmquantSigned,       // .zero stored as signed int4 z - 8 (QServe's converter adds 8 back)
  kDcZero,              // DeepCompressor PreScale: .zero, fp32 scales
  kDcScaledZero,        // DeepCompressor PostScale: .scaled_zero
  kDcScaledZeroSigned,  // PostScale with signed codes Q - 8 and z~ - 8 * s (g128 only)
};

inline const char* dump_from(DumpStyle s) {
  return s == DumpStyle::kLmquant || s == DumpStyle::kLmquantSigned ? "lmquant" : "deepcompressor";
}

// A tensor of the dump, as fp32 values encoded to `dtype` when written.
struct DumpTensor {
  DType dtype = DType::F16;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

struct SyntheticDump {
  std::map<std::string, DumpTensor> model;  // model.pt
  std::map<std::string, DumpTensor> scale;  // scale.pt
  // What the converter must recover, by linear prefix ("model.layers.0.self_attn.q_proj").
  std::map<std::string, quant::W4PerChannel> per_channel;
  std::map<std::string, quant::W4G128> g128;

  static std::vector<uint8_t> encode(const DumpTensor& t) {
    std::vector<uint8_t> b(t.values.size() * dtype_size(t.dtype));
    for (size_t i = 0; i < t.values.size(); ++i) {
      const float v = t.values[i];
      uint8_t* p = b.data() + i * dtype_size(t.dtype);
      switch (t.dtype) {
        case DType::F16: {
          const uint16_t h = float_to_fp16(v);
          std::memcpy(p, &h, 2);
          break;
        }
        case DType::F32:
          std::memcpy(p, &v, 4);
          break;
        case DType::I8:
          *reinterpret_cast<int8_t*>(p) = static_cast<int8_t>(v);
          break;
        case DType::I64: {
          const int64_t x = static_cast<int64_t>(v);
          std::memcpy(p, &x, 8);
          break;
        }
        default:
          throw std::runtime_error("SyntheticDump: unsupported dtype");
      }
    }
    return b;
  }

  static void write_file(const std::string& path, const std::map<std::string, DumpTensor>& m) {
    std::vector<std::vector<uint8_t>> bytes;
    bytes.reserve(m.size());
    std::vector<TorchWriteItem> items;
    for (const auto& [name, t] : m) {
      bytes.push_back(encode(t));
      items.push_back({name, t.dtype, t.shape,
                       std::string_view(reinterpret_cast<const char*>(bytes.back().data()),
                                        bytes.back().size())});
    }
    write_torch_checkpoint(path, items);
  }

  // Writes dir/model.pt and dir/scale.pt (the folder is created).
  void write(const std::string& dir) const {
    std::filesystem::create_directories(dir);
    write_file(dir + "/model.pt", model);
    write_file(dir + "/scale.pt", scale);
  }
};

inline bool is_linear_weight(const std::string& name) {
  return name.find("_proj.weight") != std::string::npos;
}

// Builds the dump of the HF model in `hf_dir` (every *_proj.weight quantized by RTN).
inline SyntheticDump make_dump(const std::string& hf_dir, DumpStyle style, bool g128) {
  const SafetensorsCheckpoint hf = SafetensorsCheckpoint::open_dir(hf_dir);
  const bool lq = style == DumpStyle::kLmquant || style == DumpStyle::kLmquantSigned;
  const bool post = style == DumpStyle::kDcScaledZero || style == DumpStyle::kDcScaledZeroSigned;
  const bool signed_codes = style == DumpStyle::kDcScaledZeroSigned;
  const int zero_shift = style == DumpStyle::kLmquantSigned ? -8 : 0;
  const quant::ZeroPointMode mode =
      post ? quant::ZeroPointMode::kPostScale : quant::ZeroPointMode::kIntegerPreScale;
  const DType sdt = lq ? DType::F16 : DType::F32;
  SyntheticDump d;
  for (const std::string& name : hf.names()) {
    const Tensor t = to_f32(hf.get(name));
    std::vector<float> w(t.data<float>(), t.data<float>() + t.numel());
    if (!is_linear_weight(name)) {
      d.model[name] = {DType::F16, t.shape(), std::move(w)};
      continue;
    }
    const int64_t n = t.dim(0), k = t.dim(1), G = k / quant::kGroupSize;
    const std::string p = name.substr(0, name.size() - 7);
    // Scale shapes: LMQuant's 4-d views; DeepCompressor's here as 2-d (size-1 dims are ignored).
    const std::vector<int64_t> ch =
        lq ? std::vector<int64_t>{n, 1, 1, 1} : std::vector<int64_t>{n, 1};
    const std::vector<int64_t> gr =
        lq ? std::vector<int64_t>{n, 1, G, 1} : std::vector<int64_t>{n, G};
    DumpTensor fake{DType::F16, {n, k}, std::vector<float>(w.size())};
    DumpTensor s1{sdt, ch, std::vector<float>(static_cast<size_t>(n))};
    DumpTensor s2{sdt, gr, std::vector<float>(static_cast<size_t>(n * G))};
    DumpTensor zero{sdt, g128 ? gr : ch, std::vector<float>(static_cast<size_t>(g128 ? n * G : n))};
    if (!g128) {
      quant::W4PerChannel e;
      e.n = n;
      e.k = k;
      e.q.resize(w.size());
      for (int64_t r = 0; r < n; ++r) {
        const std::span<const float> row(w.data() + r * k, static_cast<size_t>(k));
        const quant::ChannelGrid4 grid = quant::channel_grid4(row, mode);
        const float s = fp16_to_float(grid.scale);
        s1.values[static_cast<size_t>(r)] = s;
        zero.values[static_cast<size_t>(r)] =
            post ? fp16_to_float(grid.szero) : static_cast<float>(grid.zero + zero_shift);
        e.s1_scales.push_back(grid.scale);
        e.s1_szeros.push_back(grid.szero);
        for (int64_t c = 0; c < k; ++c) {
          const size_t i = static_cast<size_t>(r * k + c);
          const uint8_t q = grid.code(w[i]);
          e.q[i] = q;
          fake.values[i] = post ? grid.dequant(q) : static_cast<float>(q - grid.zero) * s;
        }
      }
      d.per_channel[p] = std::move(e);
    } else {
      quant::W4G128 e;
      e.n = n;
      e.k = k;
      e.q.resize(w.size());
      e.s2_scales.resize(static_cast<size_t>(n * G));
      e.s2_zeros.resize(static_cast<size_t>(n * G));
      for (int64_t r = 0; r < n; ++r) {
        const std::span<const float> row(w.data() + r * k, static_cast<size_t>(k));
        const uint16_t s1h = quant::g128_level1_scale(row);
        e.s1_scales.push_back(s1h);
        s1.values[static_cast<size_t>(r)] = fp16_to_float(s1h);
        for (int64_t g = 0; g < G; ++g) {
          std::vector<float> x(quant::kGroupSize);
          for (int64_t i = 0; i < quant::kGroupSize; ++i) {
            x[static_cast<size_t>(i)] =
                quant::g128_level1_value(row[static_cast<size_t>(g * quant::kGroupSize + i)], s1h);
          }
          const quant::GroupGrid4 grid = quant::group_grid4(x, mode);
          const size_t gi = static_cast<size_t>(r * G + g);
          e.s2_scales[gi] = static_cast<int8_t>(grid.s2);
          e.s2_zeros[gi] = grid.stored_zero();
          s2.values[gi] = static_cast<float>(grid.s2);
          zero.values[gi] =
              static_cast<float>(signed_codes ? grid.zero - 8 * grid.s2 : grid.zero + zero_shift);
          for (int64_t i = 0; i < quant::kGroupSize; ++i) {
            const size_t wi = static_cast<size_t>(r * k + g * quant::kGroupSize + i);
            const uint8_t q = grid.code(x[static_cast<size_t>(i)]);
            e.q[wi] = q;
            fake.values[wi] = fp16_to_float(s1h) * static_cast<float>(grid.w8(q));
          }
        }
      }
      d.g128[p] = std::move(e);
      d.scale[name + ".scale.1"] = std::move(s2);
    }
    d.model[name] = std::move(fake);
    d.scale[name + ".scale.0"] = std::move(s1);
    d.scale[name + (post ? ".scaled_zero" : ".zero")] = std::move(zero);
  }
  return d;
}

// A fresh scratch folder under the build tree.
inline std::string scratch_dir(const std::string& name) {
  const std::filesystem::path p = std::filesystem::path(binary_dir()) / "convert_test" / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace qserve::test
