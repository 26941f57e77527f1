// SafetensorsCheckpoint::open_dir: the sharded doc-llama-22m checkpoint, single files, loose
// files, and broken folders (missing shard, index/shard disagreement, duplicates).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/half.h"
#include "formats/formats_test_util.h"
#include "formats/safetensors.h"
#include "test_paths.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string doc_llama() {
  return test::model_dir("doc-llama-22m");
}

#define REQUIRE_SHARED_MODELS()                                   \
  if (!fs::exists(doc_llama() + "/model.safetensors.index.json")) \
  GTEST_SKIP() << "shared models not found at " << doc_llama()

// A copy of doc-llama-22m made of symlinks, minus `skip`, optionally with another index.
void link_doc_llama(const TempDir& dir, const std::string& skip = "") {
  for (const auto& e : fs::directory_iterator(doc_llama())) {
    const std::string name = e.path().filename().string();
    if (name != skip) fs::create_symlink(e.path(), dir.file(name));
  }
}

nlohmann::json doc_llama_index() {
  return nlohmann::json::parse(test::read_file(doc_llama() + "/model.safetensors.index.json"));
}

TEST(SafetensorsCheckpoint, ShardedDocLlama) {
  REQUIRE_SHARED_MODELS();
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(doc_llama());
  const nlohmann::json index = doc_llama_index();
  const auto& wm = index["weight_map"];
  // 6 layers x 9 tensors + embed_tokens + norm + lm_head.
  const std::vector<std::string> names = ck.names();
  EXPECT_EQ(names.size(), 57u);
  EXPECT_EQ(names.size(), wm.size());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(ck.source(), doc_llama());
  EXPECT_EQ(ck.metadata().at("format"), "pt");

  uint64_t total_bytes = 0;
  for (const std::string& name : names) {
    ASSERT_TRUE(wm.contains(name)) << name;
    EXPECT_EQ(ck.entry(name).dtype, DType::F16) << name;
    total_bytes += ck.entry(name).end - ck.entry(name).begin;
  }
  EXPECT_EQ(total_bytes, index["metadata"]["total_size"].get<uint64_t>());

  struct Expect {
    const char* name;
    std::vector<int64_t> shape;
  };
  // hidden 512, 4 heads x 128, 2 kv heads x 128, intermediate 1024, vocab 8192.
  const Expect expected[] = {
      {"model.embed_tokens.weight", {8192, 512}},
      {"lm_head.weight", {8192, 512}},
      {"model.norm.weight", {512}},
      {"model.layers.0.self_attn.q_proj.weight", {512, 512}},
      {"model.layers.0.self_attn.k_proj.weight", {256, 512}},
      {"model.layers.3.self_attn.v_proj.weight", {256, 512}},
      {"model.layers.5.self_attn.o_proj.weight", {512, 512}},
      {"model.layers.2.mlp.gate_proj.weight", {1024, 512}},
      {"model.layers.4.mlp.down_proj.weight", {512, 1024}},
      {"model.layers.1.input_layernorm.weight", {512}},
  };
  for (const Expect& e : expected) {
    SCOPED_TRACE(e.name);
    ASSERT_TRUE(ck.has(e.name));
    const Tensor t = ck.get(e.name);
    EXPECT_EQ(t.shape(), e.shape);
    EXPECT_EQ(t.dtype(), DType::F16);
    // The checkpoint hands out the bytes of the shard the index names.
    auto shard = SafetensorsFile::open(doc_llama() + "/" + wm[e.name].get<std::string>());
    const Tensor direct = shard->get(e.name);
    ASSERT_EQ(direct.nbytes(), t.nbytes());
    EXPECT_EQ(std::memcmp(direct.raw(), t.raw(), t.nbytes()), 0);
    // A trained model: finite weights, not all zero.
    double sum_abs = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float v = fp16_to_float(t.data<uint16_t>()[i]);
      ASSERT_TRUE(std::isfinite(v));
      sum_abs += std::fabs(v);
    }
    EXPECT_GT(sum_abs, 0.0);
  }
  EXPECT_QSERVE_ERROR((void)ck.get("model.nope"), doc_llama(), "model.nope");
  EXPECT_QSERVE_ERROR((void)ck.entry("model.nope"), doc_llama(), "model.nope");
}

TEST(SafetensorsCheckpoint, SingleFileModels) {
  REQUIRE_SHARED_MODELS();
  for (const char* m : {"tiny-qwen2-bias", "tiny-mistral", "tiny-llama2-mha"}) {
    SCOPED_TRACE(m);
    const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(test::model_dir(m));
    // model.safetensors only; golden_logits.safetensors next to it is not part of the model.
    EXPECT_FALSE(ck.has("logits"));
    EXPECT_TRUE(ck.has("model.embed_tokens.weight"));
    EXPECT_EQ(ck.get("model.embed_tokens.weight").shape(), (std::vector<int64_t>{1024, 256}));
  }
  const auto qwen = SafetensorsCheckpoint::open_dir(test::model_dir("tiny-qwen2-bias"));
  EXPECT_EQ(qwen.get("model.layers.0.self_attn.q_proj.bias").shape(), std::vector<int64_t>{256});
  EXPECT_EQ(qwen.get("model.layers.0.self_attn.k_proj.bias").shape(), std::vector<int64_t>{128});
  EXPECT_FALSE(qwen.has("lm_head.weight"));  // tied embeddings
  // A path to a single file is a checkpoint of its own.
  const auto golden = SafetensorsCheckpoint::open_dir(test::model_dir("tiny-mistral") +
                                                      "/golden_logits.safetensors");
  EXPECT_EQ(golden.names(), (std::vector<std::string>{"input_ids", "logits"}));
  EXPECT_EQ(golden.entry("input_ids").dtype, DType::I32);
}

TEST(SafetensorsCheckpoint, LooseFilesAndDuplicates) {
  TempDir dir;
  write_safetensors(dir.file("b.safetensors"), {{"y", DType::U8, {1}, "y"}}, {{"k", "from b"}});
  write_safetensors(dir.file("a.safetensors"), {{"x", DType::U8, {1}, "x"}}, {{"k", "from a"}});
  test::write_file(dir.file("notes.txt"), "not a tensor file");
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(dir.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(ck.get("y").data<uint8_t>()[0], 'y');
  EXPECT_EQ(ck.metadata().at("k"), "from a");  // files are opened sorted; the first one wins

  write_safetensors(dir.file("c.safetensors"), {{"x", DType::U8, {1}, "z"}});
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), "duplicate tensor 'x'",
                      "a.safetensors", "c.safetensors");

  // model.safetensors takes precedence over loose files.
  write_safetensors(dir.file("model.safetensors"), {{"m", DType::U8, {1}, "m"}});
  EXPECT_EQ(SafetensorsCheckpoint::open_dir(dir.path()).names(), std::vector<std::string>{"m"});
}

TEST(SafetensorsCheckpoint, NothingToOpen) {
  TempDir dir;
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()),
                      "no safetensors files in " + dir.path());
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.file("absent")), dir.file("absent"),
                      "not a directory");
  // A corrupt file in the folder is reported with its name.
  test::write_file(dir.file("model.safetensors"), "garbage!garbage!");
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), dir.file("model.safetensors"),
                      "header length");
}

TEST(SafetensorsCheckpoint, MissingShard) {
  REQUIRE_SHARED_MODELS();
  TempDir dir;
  link_doc_llama(dir, "model-00003-of-00006.safetensors");
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()),
                      "model-00003-of-00006.safetensors", "missing",
                      "model.safetensors.index.json");
}

TEST(SafetensorsCheckpoint, IndexNamesATensorItsShardLacks) {
  REQUIRE_SHARED_MODELS();
  TempDir dir;
  link_doc_llama(dir, "model.safetensors.index.json");
  nlohmann::json index = doc_llama_index();
  // lm_head lives in shard 6; claim it is in shard 1.
  index["weight_map"]["lm_head.weight"] = "model-00001-of-00006.safetensors";
  test::write_file(dir.file("model.safetensors.index.json"), index.dump(2));
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), "lm_head.weight",
                      "model-00001-of-00006.safetensors", "missing",
                      "model.safetensors.index.json");

  // A tensor the index invents.
  index = doc_llama_index();
  index["weight_map"]["model.extra.weight"] = "model-00002-of-00006.safetensors";
  test::write_file(dir.file("model.safetensors.index.json"), index.dump());
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), "model.extra.weight", "missing");

  // The index may omit tensors a shard has; they are simply not part of the checkpoint.
  index = doc_llama_index();
  index["weight_map"].erase("model.norm.weight");
  test::write_file(dir.file("model.safetensors.index.json"), index.dump());
  const auto ck = SafetensorsCheckpoint::open_dir(dir.path());
  EXPECT_EQ(ck.names().size(), 56u);
  EXPECT_FALSE(ck.has("model.norm.weight"));
}

TEST(SafetensorsCheckpoint, MalformedIndex) {
  TempDir dir;
  const std::string idx = dir.file("model.safetensors.index.json");
  write_safetensors(dir.file("s.safetensors"), {{"x", DType::U8, {1}, "x"}});

  test::write_file(idx, "{\"weight_map\": {\"x\": \"s.safetensors\"");
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), idx, "not valid JSON");
  test::write_file(idx, "[1, 2]");
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), idx, "object");
  test::write_file(idx, "{\"metadata\": {}}");
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), idx, "weight_map");
  test::write_file(idx, "{\"weight_map\": {}}");
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), idx, "empty");
  test::write_file(idx, "{\"weight_map\": {\"x\": 3}}");
  EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), idx, "'x'", "shard file name");
  for (const char* evil : {"../s.safetensors", "/etc/passwd", "a/../../s.safetensors", ""}) {
    test::write_file(idx, nlohmann::json{{"weight_map", {{"x", evil}}}}.dump());
    EXPECT_QSERVE_ERROR(SafetensorsCheckpoint::open_dir(dir.path()), idx, "relative path");
  }
  test::write_file(
      idx, "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {\"x\": \"s.safetensors\"}}");
  EXPECT_EQ(SafetensorsCheckpoint::open_dir(dir.path()).names(), std::vector<std::string>{"x"});
}

}  // namespace
}  // namespace qserve
