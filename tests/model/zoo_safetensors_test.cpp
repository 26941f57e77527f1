// Zoo checkpoints stored as safetensors (QServe's tensor names, no metadata of ours), single
// file and sharded with an index: built in-test from the doc model quantized at load (RTN), the
// packed tensors written with quant/qserve_format.h, loaded back through LlamaModel::load. The
// loaded linears must equal the ones we packed, bit for bit, and both layouts give the same logits.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "formats/safetensors.h"
#include "model/qserve_checkpoint.h"
#include "precision_test_util.h"
#include "quant/qserve_format.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;

quant::W4PerChannel rows(const quant::W4PerChannel& w, int64_t r0, int64_t n) {
  quant::W4PerChannel o;
  o.n = n;
  o.k = w.k;
  o.q.assign(w.q.begin() + r0 * w.k, w.q.begin() + (r0 + n) * w.k);
  o.s1_scales.assign(w.s1_scales.begin() + r0, w.s1_scales.begin() + r0 + n);
  o.s1_szeros.assign(w.s1_szeros.begin() + r0, w.s1_szeros.begin() + r0 + n);
  return o;
}

const quant::W4PerChannel& w4(const Linear& l) {
  return std::get<quant::W4PerChannel>(l.quant()->w);
}

struct Blob {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

template <typename T>
Blob blob(std::string name, DType dt, std::vector<int64_t> shape, const std::vector<T>& v) {
  return {std::move(name), dt, std::move(shape),
          std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T))};
}

std::vector<Blob> zoo_tensors(const LlamaModel& m) {
  const ModelConfig& c = m.config();
  std::vector<Blob> out;
  out.push_back(blob("model.embed_tokens.weight", DType::F32, {c.vocab_size, c.hidden_size},
                     m.weights().embed));
  out.push_back(blob("lm_head.weight", DType::F32, {c.vocab_size, c.hidden_size},
                     m.weights().lm_head.w));
  auto add = [&](const std::string& p, const quant::W4PerChannel& w) {
    const quant::QServeW4Tensors t = quant::to_qserve(w);
    out.push_back(blob(p + ".qweight", DType::I8, {w.n, w.k / 2}, t.qweight));
    out.push_back(blob(p + ".s1_scales", DType::F16, {w.n}, t.s1_scales));
    out.push_back(blob(p + ".s1_szeros", DType::F16, {w.n}, t.s1_szeros));
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = m.weights().layers[static_cast<size_t>(l)];
    const std::string a = "model.layers." + std::to_string(l) + ".self_attn.";
    const std::string f = "model.layers." + std::to_string(l) + ".mlp.";
    add(a + "q_proj", rows(w4(L.qkv), 0, c.q_dim()));
    add(a + "k_proj", rows(w4(L.qkv), c.q_dim(), c.kv_dim()));
    add(a + "v_proj", rows(w4(L.qkv), c.q_dim() + c.kv_dim(), c.kv_dim()));
    add(a + "o_proj", w4(L.o));
    add(f + "gate_proj", rows(w4(L.gate_up), 0, c.intermediate_size));
    add(f + "up_proj", rows(w4(L.gate_up), c.intermediate_size, c.intermediate_size));
    add(f + "down_proj", w4(L.down));
  }
  return out;
}

void write(const std::string& path, const std::vector<Blob>& blobs, size_t begin, size_t end) {
  std::vector<SafetensorsWriteItem> items;
  for (size_t i = begin; i < end; ++i) {
    items.push_back({blobs[i].name, blobs[i].dtype, blobs[i].shape, blobs[i].bytes});
  }
  write_safetensors(path, items);
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("qserve_zoo_st_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  fs::copy_file(fs::path(test::doc_model_dir()) / "config.json", d / "config.json");
  return d;
}

TEST(ZooSafetensors, SingleAndShardedLoadTheTensorsWePacked) {
  auto src = test::load_doc_model("w4a8kv4");
  const std::vector<Blob> blobs = zoo_tensors(*src);

  const fs::path one = fresh_dir("single");
  write((one / "model.safetensors").string(), blobs, 0, blobs.size());

  const fs::path sh = fresh_dir("sharded");
  const size_t half = blobs.size() / 2;
  write((sh / "model-00001-of-00002.safetensors").string(), blobs, 0, half);
  write((sh / "model-00002-of-00002.safetensors").string(), blobs, half, blobs.size());
  {
    std::ofstream idx(sh / "model.safetensors.index.json");
    idx << "{\"metadata\": {}, \"weight_map\": {";
    for (size_t i = 0; i < blobs.size(); ++i) {
      idx << (i ? ", " : "") << '"' << blobs[i].name << "\": \"model-0000"
          << (i < half ? 1 : 2) << "-of-00002.safetensors\"";
    }
    idx << "}}";
  }

  const std::vector<int32_t> ids = test::doc_prompt(12);
  std::vector<float> first;
  for (const fs::path& d : {one, sh}) {
    ASSERT_EQ(detect_qserve_checkpoint(d.string()), WeightPrecision::kW4A8PerChannel) << d;
    auto m = LlamaModel::load(d.string());
    EXPECT_EQ(m->precision().name(), "w4a8kv4") << d;
    for (size_t l = 0; l < src->weights().layers.size(); ++l) {
      const LayerWeights& a = src->weights().layers[l];
      const LayerWeights& b = m->weights().layers[l];
      for (auto [x, y] : {std::pair{&a.qkv, &b.qkv}, {&a.o, &b.o}, {&a.gate_up, &b.gate_up},
                          {&a.down, &b.down}}) {
        EXPECT_EQ(w4(*x).q, w4(*y).q) << d << " layer " << l;
        EXPECT_EQ(w4(*x).s1_scales, w4(*y).s1_scales);
        EXPECT_EQ(w4(*x).s1_szeros, w4(*y).s1_szeros);
      }
      EXPECT_EQ(b.input_norm, std::vector<float>(b.input_norm.size(), 1.0f));  // W4A8: not read
    }
    EXPECT_EQ(m->weights().embed, src->weights().embed);
    const std::vector<float> logits = test::prefill_logits(*m, ids);
    if (first.empty()) {
      first = logits;
    } else {
      EXPECT_EQ(logits, first) << "sharded and single-file zoo checkpoints differ";
    }
  }
  fs::remove_all(one);
  fs::remove_all(sh);
}

TEST(ZooSafetensors, SafetensorsWithoutQServeTensorsIsAnOrdinaryFolder) {
  EXPECT_EQ(detect_qserve_checkpoint(test::doc_model_dir()), std::nullopt);
}

}  // namespace
}  // namespace qserve
