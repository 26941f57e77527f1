// config.json parsing: the four shared test models, older (Llama-3.1 style) and newer
// (transformers 5) layouts, per-architecture rules, and errors.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/formats_test_util.h"
#include "formats/hf_config.h"
#include "test_paths.h"

namespace qserve {
namespace {

using nlohmann::json;

#define REQUIRE_MODEL(name)                                             \
  if (!std::filesystem::exists(test::model_dir(name) + "/config.json")) \
  GTEST_SKIP() << "shared models not found at " << test::model_dir(name)

TEST(HfConfig, DocLlama22m) {
  REQUIRE_MODEL("doc-llama-22m");
  const ModelConfig c = load_hf_config(test::model_dir("doc-llama-22m"));
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 1024);
  EXPECT_EQ(c.num_layers, 6);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_dim(), 512);
  EXPECT_EQ(c.kv_dim(), 256);
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);  // from rope_parameters
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::None);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.bos_token_id, 8184);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{8188});
  EXPECT_EQ(c.torch_dtype, "float16");  // transformers 5 "dtype"
}

TEST(HfConfig, TinyLlama2Mha) {
  REQUIRE_MODEL("tiny-llama2-mha");
  const ModelConfig c = load_hf_config(test::model_dir("tiny-llama2-mha"));
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.intermediate_size, 512);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
}

TEST(HfConfig, TinyMistral) {
  REQUIRE_MODEL("tiny-mistral");
  const ModelConfig c = load_hf_config(test::model_dir("tiny-mistral"));
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
}

TEST(HfConfig, TinyQwen2Bias) {
  REQUIRE_MODEL("tiny-qwen2-bias");
  const ModelConfig c = load_hf_config(test::model_dir("tiny-qwen2-bias"));
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.intermediate_size, 512);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.sliding_window.has_value());  // sliding_window null, use_sliding_window false
  EXPECT_FALSE(c.bos_token_id.has_value());    // null
  EXPECT_TRUE(c.eos_token_ids.empty());        // null
}

// The layout of real Llama-3.1 checkpoints (transformers 4.x).
json llama31() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "attention_bias": false, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": false, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

TEST(HfConfig, Llama31OldStyle) {
  const ModelConfig c = parse_hf_config(llama31(), "llama31/config.json");
  EXPECT_EQ(c.head_dim, 128);  // 4096 / 32
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  const std::string d = describe(c);
  EXPECT_NE(d.find("LlamaForCausalLM"), std::string::npos) << d;
  EXPECT_NE(d.find("llama3"), std::string::npos) << d;
  EXPECT_NE(d.find("GQA 4:1"), std::string::npos) << d;
  EXPECT_NE(d.find("128001 128008 128009"), std::string::npos) << d;
}

TEST(HfConfig, Llama31Transformers5Style) {
  json j = llama31();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("torch_dtype");
  j["dtype"] = "bfloat16";
  j["rope_parameters"] = json::parse(R"({"rope_type": "llama3", "rope_theta": 500000.0,
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192})");
  const ModelConfig c = parse_hf_config(j, "t5.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(HfConfig, LinearRopeAndDefaults) {
  json j = llama31();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2}};  // the oldest spelling: "type"
  ModelConfig c = parse_hf_config(j, "lin.json");
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::Linear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);

  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse_hf_config(j, "d.json").rope_scaling.type, RopeScaling::Type::None);
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(parse_hf_config(j, "d.json").rope_scaling.type, RopeScaling::Type::None);

  // Optional fields fall back to transformers' defaults.
  for (const char* k : {"rope_scaling", "rope_theta", "num_key_value_heads", "rms_norm_eps",
                        "hidden_act", "tie_word_embeddings", "eos_token_id", "bos_token_id",
                        "torch_dtype", "max_position_embeddings", "attention_bias", "mlp_bias"}) {
    j.erase(k);
  }
  j["head_dim"] = nullptr;
  c = parse_hf_config(j, "min.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_EQ(c.torch_dtype, "");

  // No architectures: the model_type decides.
  j.erase("architectures");
  EXPECT_EQ(parse_hf_config(j, "mt.json").architecture, "LlamaForCausalLM");
}

TEST(HfConfig, LlamaBiases) {
  json j = llama31();
  j["attention_bias"] = true;
  ModelConfig c = parse_hf_config(j, "b.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  j["mlp_bias"] = true;
  EXPECT_TRUE(parse_hf_config(j, "b.json").mlp_bias);
}

json mistral7b() {
  return json::parse(R"({
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "vocab_size": 32000})");
}

TEST(HfConfig, Mistral) {
  json j = mistral7b();
  ModelConfig c = parse_hf_config(j, "m.json");
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_NE(describe(c).find("sliding window: 4096"), std::string::npos);
  j["sliding_window"] = nullptr;  // Mistral v0.2+
  EXPECT_FALSE(parse_hf_config(j, "m.json").sliding_window.has_value());
  j["attention_bias"] = true;  // not a Mistral option; ignored as transformers does
  EXPECT_FALSE(parse_hf_config(j, "m.json").qkv_bias);
  j["sliding_window"] = 0;
  EXPECT_QSERVE_ERROR(parse_hf_config(j, "m.json"), "m.json", "sliding_window", "positive");
}

json qwen2(int layers = 28) {
  json j = json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 32768,
    "max_window_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
    "tie_word_embeddings": false, "use_sliding_window": false, "vocab_size": 152064,
    "bos_token_id": 151643, "eos_token_id": 151643})");
  j["num_hidden_layers"] = layers;
  return j;
}

TEST(HfConfig, Qwen2SlidingWindowOnlyWhenEnabled) {
  json j = qwen2();
  ModelConfig c = parse_hf_config(j, "q.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_FALSE(c.sliding_window.has_value());  // use_sliding_window false
  j["use_sliding_window"] = true;
  // Sliding applies from layer max_window_layers (28) on: none of the 28 layers.
  EXPECT_FALSE(parse_hf_config(j, "q.json").sliding_window.has_value());
  j["max_window_layers"] = 0;
  EXPECT_EQ(parse_hf_config(j, "q.json").sliding_window, 131072);
  j["max_window_layers"] = 14;
  EXPECT_QSERVE_ERROR(parse_hf_config(j, "q.json"), "q.json", "14 of 28 layers");
  j.erase("max_window_layers");  // transformers' default is 28
  EXPECT_FALSE(parse_hf_config(j, "q.json").sliding_window.has_value());
  // An explicit layer_types list (transformers 5) wins.
  j["layer_types"] = json::array();
  for (int i = 0; i < 28; ++i) j["layer_types"].push_back("sliding_attention");
  EXPECT_EQ(parse_hf_config(j, "q.json").sliding_window, 131072);
  j["layer_types"][3] = "full_attention";
  EXPECT_QSERVE_ERROR(parse_hf_config(j, "q.json"), "q.json", "27 of 28");
  j["layer_types"] = json::array({"full_attention"});
  EXPECT_QSERVE_ERROR(parse_hf_config(j, "q.json"), "q.json", "layer_types");
}

TEST(HfConfig, Errors) {
  auto with = [](const char* key, json v) {
    json j = llama31();
    j[key] = std::move(v);
    return j;
  };
  auto without = [](const char* key) {
    json j = llama31();
    j.erase(key);
    return j;
  };
  const std::string src = "bad/config.json";
  EXPECT_QSERVE_ERROR(parse_hf_config(with("architectures", {"GPT2LMHeadModel"}), src), src,
                      "GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM",
                      "Qwen2ForCausalLM");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("architectures", json::array()), src), src,
                      "architectures");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("architectures", "LlamaForCausalLM"), src), src,
                      "architectures");
  json noarch = without("architectures");
  noarch["model_type"] = "gemma";
  EXPECT_QSERVE_ERROR(parse_hf_config(noarch, src), src, "gemma", "LlamaForCausalLM");
  EXPECT_QSERVE_ERROR(parse_hf_config(without("hidden_size"), src), src, "missing", "hidden_size");
  EXPECT_QSERVE_ERROR(parse_hf_config(without("vocab_size"), src), src, "vocab_size");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("hidden_size", "4096"), src), src, "hidden_size",
                      "integer");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("hidden_size", 4096.0), src), src, "hidden_size",
                      "integer");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("num_hidden_layers", 0), src), src, "num_hidden_layers",
                      "positive");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("intermediate_size", -5), src), src, "positive");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("num_key_value_heads", 5), src), src,
                      "num_key_value_heads", "multiple");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("num_attention_heads", 48), src), src, "hidden_size",
                      "head_dim");
  json hd = with("num_attention_heads", 48);  // 4096 / 48 does not divide, but head_dim is given
  hd["head_dim"] = 64;
  hd["num_key_value_heads"] = 8;
  EXPECT_EQ(parse_hf_config(hd, src).q_dim(), 48 * 64);
  EXPECT_QSERVE_ERROR(parse_hf_config(with("head_dim", 0), src), src, "head_dim");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("hidden_act", "gelu"), src), src, "gelu", "silu");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("rms_norm_eps", -1.0), src), src, "rms_norm_eps");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("rope_theta", "big"), src), src, "rope_theta", "number");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("tie_word_embeddings", 1), src), src,
                      "tie_word_embeddings", "true or false");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("eos_token_id", {1, "x"}), src), src, "eos_token_id");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("eos_token_id", -1), src), src, "eos_token_id");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("bos_token_id", {1, 2}), src), src, "bos_token_id");
  EXPECT_QSERVE_ERROR(parse_hf_config(json::array(), src), src, "object");

  for (const char* type : {"yarn", "dynamic", "longrope", "su"}) {
    EXPECT_QSERVE_ERROR(
        parse_hf_config(with("rope_scaling", {{"rope_type", type}, {"factor", 4.0}}), src), src,
        type, "default, linear, llama3");
  }
  EXPECT_QSERVE_ERROR(parse_hf_config(with("rope_scaling", {{"factor", 4.0}}), src), src,
                      "rope_type");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("rope_scaling", "linear"), src), src, "rope_scaling");
  EXPECT_QSERVE_ERROR(parse_hf_config(with("rope_scaling", {{"rope_type", "linear"}}), src), src,
                      "factor");
  json l3 = llama31();
  l3["rope_scaling"].erase("low_freq_factor");
  EXPECT_QSERVE_ERROR(parse_hf_config(l3, src), src, "rope_scaling.low_freq_factor");
  l3 = llama31();
  l3["rope_scaling"]["low_freq_factor"] = 4.0;
  EXPECT_QSERVE_ERROR(parse_hf_config(l3, src), src, "low_freq_factor < high_freq_factor");
  json rp = without("rope_theta");
  rp["rope_parameters"] = {{"full_attention", {{"rope_theta", 1e4}}}};
  EXPECT_QSERVE_ERROR(parse_hf_config(rp, src), src, "rope_parameters");
  rp["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e4}, {"factor", 4.0}};
  EXPECT_QSERVE_ERROR(parse_hf_config(rp, src), src, "yarn", "rope_parameters");
}

TEST(HfConfig, LoadErrorsNameTheFile) {
  test::TempDir dir;
  const std::string cfg = dir.file("config.json");
  EXPECT_QSERVE_ERROR(load_hf_config(dir.path()), cfg);
  test::write_file(cfg, "{\"architectures\": [\"LlamaForCausalLM\"], ");
  EXPECT_QSERVE_ERROR(load_hf_config(dir.path()), cfg, "not valid JSON");
  test::write_file(cfg, llama31().dump());
  EXPECT_EQ(load_hf_config(dir.path()).hidden_size, 4096);
  json j = llama31();
  j.erase("hidden_size");
  test::write_file(cfg, j.dump());
  EXPECT_QSERVE_ERROR(load_hf_config(dir.path()), cfg, "hidden_size");
}

}  // namespace
}  // namespace qserve
