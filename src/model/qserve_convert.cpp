// LMQuant / DeepCompressor dump -> our quantized checkpoint (model/qserve_convert.h). This file
// walks model.pt and writes the outputs; convert_dump_keys.cpp reads scale.pt and
// convert_codes.cpp recovers each linear's codes.
#include "model/qserve_convert.h"

#include <cctype>
#include <deque>
#include <filesystem>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "formats/torch_writer.h"
#include "model/convert_dump.h"
#include "model/qserve_checkpoint.h"
#include "quant/qserve_format.h"

namespace qserve {

namespace {

namespace fs = std::filesystem;
using convert_detail::DumpFormat;
using convert_detail::DumpLinear;
using convert_detail::DumpScales;

constexpr const char* kZooFile = "pytorch_model.bin";  // QServe's model-zoo checkpoint

bool starts_with(const std::string& s, std::string_view p) {
  return s.compare(0, p.size(), p) == 0;
}

// model.layers.{i}.self_attn.{q,k,v,o}_proj.weight or model.layers.{i}.mlp.{gate,up,down}_proj
// .weight: the linears QServe's converter quantizes (and its loader expects packed).
bool is_decoder_linear(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (!starts_with(name, prefix)) return false;
  size_t i = prefix.size();
  const size_t digits = i;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
  if (i == digits) return false;
  static const char* kSuffixes[] = {".self_attn.q_proj.weight", ".self_attn.k_proj.weight",
                                    ".self_attn.v_proj.weight", ".self_attn.o_proj.weight",
                                    ".mlp.gate_proj.weight",    ".mlp.up_proj.weight",
                                    ".mlp.down_proj.weight"};
  for (const char* s : kSuffixes) {
    if (name.compare(i, std::string::npos, s) == 0) return true;
  }
  return false;
}

// The dump's two files, with errors that say what a dump folder should hold.
std::string dump_file(const std::string& quant_path, const char* name) {
  const fs::path p = fs::path(quant_path) / name;
  if (fs::is_regular_file(p)) return p.string();
  if (fs::is_regular_file(fs::path(quant_path) / "quant_model.pt")) {
    throw Error(quant_path +
                ": holds quant_model.pt, the output of DeepCompressor's QServe converter (an "
                "already converted QServe checkpoint), not a fake-quant dump; qserve convert "
                "reads the dump it was made from (model.pt and scale.pt, written by "
                "DeepCompressor's ptq with --save-model)");
  }
  throw Error(p.string() + ": no such file (a dump folder holds model.pt, the fake-quantized " +
              "state dict, and scale.pt, its scales and zero points)");
}

// Output tensors, kept alive until both files are written.
class Outputs {
 public:
  void add(const std::string& name, DType dt, std::vector<int64_t> shape,
           std::vector<uint8_t> bytes) {
    store_.push_back(std::move(bytes));
    items_.push_back({name, dt, std::move(shape),
                      std::string_view(reinterpret_cast<const char*>(store_.back().data()),
                                       store_.back().size())});
  }
  template <typename T>
  void add(const std::string& name, DType dt, std::vector<int64_t> shape, const std::vector<T>& v) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(v.data());
    add(name, dt, std::move(shape), std::vector<uint8_t>(b, b + v.size() * sizeof(T)));
  }
  // Not quantized: stored as fp16 (QServe casts the model to fp16 at load); integer tensors as
  // they are.
  void add_plain(const std::string& name, const Tensor& t) {
    if (t.dtype() == DType::F16 || !dtype_is_float(t.dtype())) {
      const uint8_t* b = static_cast<const uint8_t*>(t.raw());
      add(name, t.dtype(), t.shape(), std::vector<uint8_t>(b, b + t.nbytes()));
      return;
    }
    const std::vector<float> f = convert_detail::tensor_floats(t, name);
    std::vector<uint16_t> h(f.size());
    for (size_t i = 0; i < f.size(); ++i) h[i] = float_to_fp16(f[i]);
    add(name, DType::F16, t.shape(), h);
  }
  // One quantized linear under QServe's names (qserve-compat.md §2.2).
  void add_linear(const std::string& prefix, const quant::QServeW4Tensors& p, int64_t n, int64_t k,
                  bool g128) {
    add(prefix + ".qweight", DType::I8, {n, k / 2}, p.qweight);
    add(prefix + ".s1_scales", DType::F16, {n}, p.s1_scales);
    if (!g128) {
      add(prefix + ".s1_szeros", DType::F16, {n}, p.s1_szeros);
    } else {
      add(prefix + ".s2_scales", DType::I8, {k / quant::kGroupSize, n}, p.s2_scales);
      add(prefix + ".s2_zeros", DType::I8, {k / quant::kGroupSize, n}, p.s2_zeros);
    }
  }
  const std::vector<SafetensorsWriteItem>& items() const { return items_; }

 private:
  std::deque<std::vector<uint8_t>> store_;
  std::vector<SafetensorsWriteItem> items_;
};

quant::QServeW4Tensors convert_linear(const std::string& name, const Tensor& t,
                                      const DumpScales& scales, const std::string& mp, bool g128) {
  DumpLinear d;
  d.weight_src = mp + ": '" + name + "'";
  check(t.ndim() == 2 && name.size() > 7 && name.substr(name.size() - 7) == ".weight",
        d.weight_src + " has scales in scale.pt but is not a 2-D .weight (shape " + t.shape_str() +
            ")");
  d.n = t.dim(0);
  d.k = t.dim(1);
  check(d.n % 32 == 0 && d.k % 32 == 0,
        d.weight_src + " has shape " + t.shape_str() +
            ": QServe's 4-bit layout needs both dimensions to be multiples of 32");
  d.w = convert_detail::tensor_floats(t, d.weight_src);
  scales.read(name, d);
  // recover_* name the tensor in their errors; packing a validated weight of these dimensions
  // cannot fail, but say which tensor if it ever does.
  auto pack = [&](const auto& w) {
    try {
      return quant::to_qserve(w);
    } catch (const Error& e) {
      throw Error(d.weight_src + ": " + e.what());
    }
  };
  return g128 ? pack(convert_detail::recover_g128(d))
              : pack(convert_detail::recover_per_channel(d));
}

}  // namespace

int64_t convert_dump(const ConvertOptions& o) {
  check(o.from == "lmquant" || o.from == "deepcompressor",
        "convert --from " + o.from + ": expected lmquant or deepcompressor");
  check(
      o.group_size == -1 || o.group_size == 128,
      "convert --group-size must be -1 (per-channel) or 128, got " + std::to_string(o.group_size));
  check(fs::is_directory(o.model_dir),
        o.model_dir + ": not a folder (--model is the HF model folder: config.json, tokenizer)");
  check(!o.out.empty(), "convert: no output folder (--out)");
  check(!fs::exists(o.out) || !fs::equivalent(o.out, o.model_dir),
        o.out + ": the output folder is the HF model folder; write the checkpoint elsewhere");
  const bool g128 = o.group_size == 128;
  const DumpFormat format =
      o.from == "lmquant" ? DumpFormat::kLmquant : DumpFormat::kDeepCompressor;
  const std::string mp = dump_file(o.quant_path, "model.pt");
  const std::string sp = dump_file(o.quant_path, "scale.pt");
  const TorchCheckpoint model = TorchCheckpoint::open(mp);
  const TorchCheckpoint scale = TorchCheckpoint::open(sp);
  for (const auto& [name, dtype] : model.unsupported()) {
    throw Error(mp + ": '" + name + "' has dtype torch." + dtype + ", which qserve cannot read");
  }
  const DumpScales scales(scale, format, g128);
  for (const std::string& p : scales.weights()) {
    check(model.has(p), sp + ": has entries for '" + p + "', which " + mp + " does not have");
  }

  Outputs out;
  int64_t linears = 0;
  for (const std::string& name : model.names()) {
    const Tensor t = model.get(name);
    if (scales.mentions(name)) {
      const quant::QServeW4Tensors packed = convert_linear(name, t, scales, mp, g128);
      out.add_linear(name.substr(0, name.size() - 7), packed, t.dim(0), t.dim(1), g128);
      ++linears;
    } else if (is_decoder_linear(name)) {
      throw Error(mp + ": '" + name + "' is a decoder linear, but " + sp + " has no '" + name +
                  ".scale.0' (nor any entry for it): every linear of a W4A8 dump is quantized");
    } else {
      out.add_plain(name, t);
    }
  }
  check(linears > 0, sp + ": no '<name>.scale.0' key matches a tensor of " + mp);

  fs::create_directories(o.out);
  const std::map<std::string, std::string> meta{
      {kFormatKey, kFormatValue},
      {kSchemeKey, g128 ? "w4a8-g128" : "w4a8-per-channel"},
      {kGroupSizeKey, std::to_string(o.group_size)},
      {kLayoutKey, "1"},
      {"source", o.from + " dump " + o.quant_path}};
  write_safetensors((fs::path(o.out) / kOurFile).string(), out.items(), meta);
  if (o.layout_qserve) {
    std::vector<TorchWriteItem> zoo;
    for (const SafetensorsWriteItem& i : out.items()) {
      zoo.push_back({i.name, i.dtype, i.shape, i.bytes});
    }
    write_torch_checkpoint((fs::path(o.out) / kZooFile).string(), zoo);
  }
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
