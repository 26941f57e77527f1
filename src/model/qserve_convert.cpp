// LMQuant dump -> our quantized checkpoint (model/qserve_convert.h).
#include "model/qserve_convert.h"

#include <cmath>
#include <deque>
#include <filesystem>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "model/qserve_checkpoint.h"
#include "quant/qserve_format.h"

namespace qserve {

namespace {

namespace fs = std::filesystem;

std::vector<float> floats(const Tensor& t) {
  Tensor f = to_f32(t);
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

// An integer-valued float in [0, 15], or throw naming the tensor.
int code_of(double x, const std::string& what, int64_t index) {
  const double r = std::nearbyint(x);
  if (r != x || r < 0 || r > 15) {
    throw Error(what + ": element " + std::to_string(index) + " is " + std::to_string(x) +
                ", expected an integer in [0, 15]");
  }
  return static_cast<int>(r);
}

}  // namespace

int64_t convert_lmquant(const ConvertOptions& o) {
  check(o.from == "lmquant", "convert --from " + o.from +
                                 ": only 'lmquant' dumps are supported (deepcompressor's "
                                 "scale.pt key names are not implemented)");
  check(
      o.group_size == -1 || o.group_size == 128,
      "convert --group-size must be -1 (per-channel) or 128, got " + std::to_string(o.group_size));
  const bool g128 = o.group_size == 128;
  const std::string mp = (fs::path(o.quant_path) / "model.pt").string();
  const std::string sp = (fs::path(o.quant_path) / "scale.pt").string();
  const TorchCheckpoint model = TorchCheckpoint::open(mp);
  const TorchCheckpoint scale = TorchCheckpoint::open(sp);

  std::deque<std::vector<uint8_t>> store;
  std::vector<SafetensorsWriteItem> items;
  auto add = [&](const std::string& name, DType dt, std::vector<int64_t> shape,
                 std::vector<uint8_t> bytes) {
    store.push_back(std::move(bytes));
    items.push_back({name, dt, std::move(shape),
                     std::string_view(reinterpret_cast<const char*>(store.back().data()),
                                      store.back().size())});
  };
  auto bytes_of = [](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    return std::vector<uint8_t>(b, b + n);
  };

  int64_t linears = 0;
  for (const std::string& name : model.names()) {
    const Tensor t = model.get(name);
    const std::string s0 = name + ".scale.0";
    if (!scale.has(s0)) {
      // Not quantized: stored as fp16 (QServe casts the model to fp16 at load).
      if (t.dtype() == DType::F16) {
        add(name, DType::F16, t.shape(), bytes_of(t.raw(), t.nbytes()));
      } else if (dtype_is_float(t.dtype())) {
        std::vector<float> f = floats(t);
        std::vector<uint16_t> h(f.size());
        for (size_t i = 0; i < f.size(); ++i) h[i] = float_to_fp16(f[i]);
        add(name, DType::F16, t.shape(), bytes_of(h.data(), h.size() * 2));
      } else {
        add(name, t.dtype(), t.shape(), bytes_of(t.raw(), t.nbytes()));
      }
      continue;
    }
    check(t.ndim() == 2 && name.size() > 7 && name.substr(name.size() - 7) == ".weight",
          mp + ": '" + name + "' has scales in scale.pt but is not a 2-D .weight");
    const int64_t n = t.dim(0), k = t.dim(1);
    const std::string prefix = name.substr(0, name.size() - 7);
    const std::vector<float> w = floats(t);
    const std::vector<float> s1 = floats(scale.get(s0));
    const std::vector<float> zero = floats(scale.get(name + ".zero"));
    check(static_cast<int64_t>(s1.size()) == n, sp + ": '" + s0 + "' has " +
                                                    std::to_string(s1.size()) +
                                                    " elements, expected " + std::to_string(n));
    std::vector<uint16_t> s1h(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      s1h[static_cast<size_t>(i)] = float_to_fp16(s1[static_cast<size_t>(i)]);
    auto w_over_s1 = [&](int64_t r, int64_t c, const std::string& what) {
      const double x = static_cast<double>(w[static_cast<size_t>(r * k + c)]) /
                       static_cast<double>(s1[static_cast<size_t>(r)]);
      const double q = std::nearbyint(x);
      if (!(std::fabs(x - q) <= 0.25)) {
        throw Error(what + ": weight [" + std::to_string(r) + ", " + std::to_string(c) +
                    "] / s1 = " + std::to_string(x) + " is not close to an integer");
      }
      return q;
    };
    quant::QServeW4Tensors packed;
    if (!g128) {
      check(static_cast<int64_t>(zero.size()) == n,
            sp + ": '" + name + ".zero' has the wrong size for per-channel");
      quant::W4PerChannel q;
      q.n = n;
      q.k = k;
      q.q.resize(static_cast<size_t>(n * k));
      q.s1_scales = s1h;
      q.s1_szeros.resize(static_cast<size_t>(n));
      for (int64_t r = 0; r < n; ++r) {
        const int z = code_of(zero[static_cast<size_t>(r)], sp + ": '" + name + ".zero'", r);
        q.s1_szeros[static_cast<size_t>(r)] =
            float_to_fp16(static_cast<float>(z) * s1[static_cast<size_t>(r)]);
        for (int64_t c = 0; c < k; ++c) {
          const double v = w_over_s1(r, c, mp + ": '" + name + "'") + z;
          q.q[static_cast<size_t>(r * k + c)] =
              static_cast<uint8_t>(code_of(v, mp + ": '" + name + "' codes", r * k + c));
        }
      }
      packed = quant::to_qserve(q);
    } else {
      check(k % 128 == 0, mp + ": '" + name + "': in_features not a multiple of 128");
      const int64_t G = k / 128;
      const std::vector<float> s2 = floats(scale.get(name + ".scale.1"));
      check(static_cast<int64_t>(s2.size()) == n * G && static_cast<int64_t>(zero.size()) == n * G,
            sp + ": '" + name + ".scale.1' / '.zero' do not have N x K/128 elements");
      quant::W4G128 q;
      q.n = n;
      q.k = k;
      q.q.resize(static_cast<size_t>(n * k));
      q.s1_scales = s1h;
      q.s2_scales.resize(static_cast<size_t>(n * G));
      q.s2_zeros.resize(static_cast<size_t>(n * G));
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t g = 0; g < G; ++g) {
          const size_t gi = static_cast<size_t>(r * G + g);
          const double s2v = s2[gi];
          if (std::nearbyint(s2v) != s2v || s2v < 1 || s2v > 127) {
            throw Error(sp + ": '" + name + ".scale.1' element " + std::to_string(gi) + " is " +
                        std::to_string(s2v) + ", expected an integer in [1, 127]");
          }
          const int z = code_of(zero[gi], sp + ": '" + name + ".zero'", static_cast<int64_t>(gi));
          q.s2_scales[gi] = static_cast<int8_t>(s2v);
          q.s2_zeros[gi] =
              static_cast<int8_t>(static_cast<uint8_t>((-z * static_cast<int>(s2v)) & 0xff));
          for (int64_t c = g * 128; c < (g + 1) * 128; ++c) {
            const double v = w_over_s1(r, c, mp + ": '" + name + "'") / s2v + z;
            q.q[static_cast<size_t>(r * k + c)] =
                static_cast<uint8_t>(code_of(v, mp + ": '" + name + "' codes", r * k + c));
          }
        }
      }
      packed = quant::to_qserve(q);
    }
    add(prefix + ".qweight", DType::I8, {n, k / 2}, std::move(packed.qweight));
    add(prefix + ".s1_scales", DType::F16, {n},
        bytes_of(packed.s1_scales.data(), 2 * static_cast<size_t>(n)));
    if (!g128) {
      add(prefix + ".s1_szeros", DType::F16, {n},
          bytes_of(packed.s1_szeros.data(), 2 * static_cast<size_t>(n)));
    } else {
      const int64_t G = k / 128;
      add(prefix + ".s2_scales", DType::I8, {G, n},
          bytes_of(packed.s2_scales.data(), packed.s2_scales.size()));
      add(prefix + ".s2_zeros", DType::I8, {G, n},
          bytes_of(packed.s2_zeros.data(), packed.s2_zeros.size()));
    }
    ++linears;
  }
  check(linears > 0, sp + ": no '<name>.scale.0' key matches a tensor of " + mp);

  fs::create_directories(o.out);
  const std::map<std::string, std::string> meta{
      {kFormatKey, kFormatValue},
      {kSchemeKey, g128 ? "w4a8-g128" : "w4a8-per-channel"},
      {kGroupSizeKey, std::to_string(o.group_size)},
      {kLayoutKey, "1"},
      {"source", "lmquant dump " + o.quant_path}};
  write_safetensors((fs::path(o.out) / kOurFile).string(), items, meta);
  for (const auto& e : fs::directory_iterator(o.model_dir)) {
    const std::string fn = e.path().filename().string();
    const bool json = e.path().extension() == ".json" && fn != "model.safetensors.index.json" &&
                      fn != "pytorch_model.bin.index.json";
    if (e.is_regular_file() && (json || fn == "tokenizer.model")) {
      fs::copy_file(e.path(), fs::path(o.out) / fn, fs::copy_options::overwrite_existing);
    }
  }
  return linears;
}

}  // namespace qserve
