// Streaming writer of the quantized checkpoint (qoq/checkpoint_writer.h).
#include "qoq/checkpoint_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/half.h"
#include "quant/qserve_format.h"

namespace qserve::qoq {

namespace {

// Data order of write_safetensors: larger dtype alignment first, then name.
int align_rank(DType t) {
  switch (t) {
    case DType::F32:
      return 3;
    case DType::F16:
    case DType::BF16:
      return 2;
    default:
      return static_cast<int>(dtype_size(t));
  }
}

uint64_t numel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

}  // namespace

std::string scheme_metadata_name(WeightScheme scheme) {
  switch (scheme) {
    case WeightScheme::kW4G128:
      return "w4a8-g128";
    case WeightScheme::kW4PerChannel:
      return "w4a8-per-channel";
    case WeightScheme::kW8:
      return "w8a8";
  }
  return "";
}

std::vector<TensorSpec> checkpoint_tensor_specs(const ModelConfig& cfg, WeightScheme scheme) {
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  std::vector<TensorSpec> s;
  s.push_back({"model.embed_tokens.weight", DType::F16, {V, H}});
  s.push_back({"model.norm.weight", DType::F16, {H}});
  s.push_back({"lm_head.weight", DType::F16, {V, H}});
  const bool w4 = scheme != WeightScheme::kW8;
  auto linear = [&](const std::string& p, int64_t n, int64_t k, bool bias) {
    if (w4) {
      s.push_back({p + ".qweight", DType::I8, {n, k / 2}});
      s.push_back({p + ".s1_scales", DType::F16, {n}});
      if (scheme == WeightScheme::kW4PerChannel) {
        s.push_back({p + ".s1_szeros", DType::F16, {n}});
      } else {
        s.push_back({p + ".s2_scales", DType::I8, {k / 128, n}});
        s.push_back({p + ".s2_zeros", DType::I8, {k / 128, n}});
      }
      if (bias) s.push_back({p + ".bias", DType::F16, {n}});
    } else {
      s.push_back({p + ".weight", DType::I8, {n, k}});
      s.push_back({p + ".dequant_scale", DType::F16, {n}});
    }
  };
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    s.push_back({p + ".input_layernorm.weight", DType::F16, {H}});
    s.push_back({p + ".post_attention_layernorm.weight", DType::F16, {H}});
    linear(p + ".self_attn.q_proj", cfg.q_dim(), H, cfg.qkv_bias);
    linear(p + ".self_attn.k_proj", cfg.kv_dim(), H, cfg.qkv_bias);
    linear(p + ".self_attn.v_proj", cfg.kv_dim(), H, cfg.qkv_bias);
    linear(p + ".self_attn.o_proj", H, cfg.q_dim(), cfg.o_bias);
    linear(p + ".mlp.gate_proj", I, H, cfg.mlp_bias);
    linear(p + ".mlp.up_proj", I, H, cfg.mlp_bias);
    linear(p + ".mlp.down_proj", H, I, cfg.mlp_bias);
  }
  return s;
}

StreamingCheckpointWriter::StreamingCheckpointWriter(
    std::string path, const std::vector<TensorSpec>& specs,
    const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), tmp_(path_ + ".partial") {
  std::vector<const TensorSpec*> order;
  for (const TensorSpec& t : specs) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorSpec* a, const TensorSpec* b) {
    const int ra = align_rank(a->dtype), rb = align_rank(b->dtype);
    return ra != rb ? ra > rb : a->name < b->name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorSpec* t : order) {
    const uint64_t bytes = numel(t->shape) * dtype_size(t->dtype);
    check(slots_.emplace(t->name, Slot{offset, bytes}).second,
          path_ + ": duplicate tensor '" + t->name + "'");
    header[t->name] = {{"dtype", std::string(dtype_name(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  data_start_ = 8 + h.size();
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  check(fd_ >= 0, tmp_ + ": cannot create: " + std::strerror(errno));
  uint8_t len[8];
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i, n >>= 8) len[i] = static_cast<uint8_t>(n & 0xff);
  auto put = [&](uint64_t at, const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    while (bytes > 0) {
      const ssize_t w =
          ::pwrite(fd_, c, std::min<size_t>(bytes, size_t{1} << 30), static_cast<off_t>(at));
      if (w < 0 && errno == EINTR) continue;
      check(w > 0, tmp_ + ": write failed: " + std::strerror(errno));
      c += w;
      at += static_cast<uint64_t>(w);
      bytes -= static_cast<size_t>(w);
    }
  };
  put(0, len, 8);
  put(8, h.data(), h.size());
  check(::ftruncate(fd_, static_cast<off_t>(data_start_ + offset)) == 0,
        tmp_ + ": cannot size the file: " + std::strerror(errno));
}

StreamingCheckpointWriter::~StreamingCheckpointWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_.c_str());
}

void StreamingCheckpointWriter::write(const std::string& name, const void* data, size_t bytes) {
  auto it = slots_.find(name);
  check(it != slots_.end(), path_ + ": tensor '" + name + "' was not declared");
  Slot& s = it->second;
  check(!s.written, path_ + ": tensor '" + name + "' written twice");
  check(s.bytes == bytes, path_ + ": tensor '" + name + "' has " + std::to_string(bytes) +
                              " bytes, expected " + std::to_string(s.bytes));
  const char* c = static_cast<const char*>(data);
  uint64_t at = data_start_ + s.offset;
  while (bytes > 0) {
    const ssize_t w =
        ::pwrite(fd_, c, std::min<size_t>(bytes, size_t{1} << 30), static_cast<off_t>(at));
    if (w < 0 && errno == EINTR) continue;
    check(w > 0, tmp_ + ": write failed: " + std::strerror(errno));
    c += w;
    at += static_cast<uint64_t>(w);
    bytes -= static_cast<size_t>(w);
  }
  s.written = true;
}

void StreamingCheckpointWriter::write_f16(const std::string& name, const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_fp16(v[i]);
  write(name, h.data(), h.size() * 2);
}

void StreamingCheckpointWriter::write_linear(const std::string& p, const QuantizedLinear& q) {
  if (const auto* w8 = std::get_if<quant::W8PerChannel>(&q.w)) {
    write(p + ".weight", w8->w.data(), w8->w.size());
    write(p + ".dequant_scale", w8->dequant_scale.data(), w8->dequant_scale.size() * 2);
    return;
  }
  const quant::QServeW4Tensors t = std::visit(
      [](const auto& w) -> quant::QServeW4Tensors {
        if constexpr (std::is_same_v<std::decay_t<decltype(w)>, quant::W8PerChannel>) {
          return {};
        } else {
          return quant::to_qserve(w);
        }
      },
      q.w);
  write(p + ".qweight", t.qweight.data(), t.qweight.size());
  write(p + ".s1_scales", t.s1_scales.data(), t.s1_scales.size() * 2);
  if (std::holds_alternative<quant::W4PerChannel>(q.w)) {
    write(p + ".s1_szeros", t.s1_szeros.data(), t.s1_szeros.size() * 2);
  } else {
    write(p + ".s2_scales", t.s2_scales.data(), t.s2_scales.size());
    write(p + ".s2_zeros", t.s2_zeros.data(), t.s2_zeros.size());
  }
}

void StreamingCheckpointWriter::finish() {
  for (const auto& [name, s] : slots_) {
    check(s.written, path_ + ": tensor '" + name + "' was never written");
  }
  check(::fsync(fd_) == 0, tmp_ + ": fsync failed: " + std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  check(::close(fd) == 0, tmp_ + ": close failed");
  check(::rename(tmp_.c_str(), path_.c_str()) == 0,
        tmp_ + ": cannot rename to " + path_ + ": " + std::strerror(errno));
  finished_ = true;
}

}  // namespace qserve::qoq
