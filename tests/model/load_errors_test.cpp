// Bad checkpoints fail with one clear error that names the folder/file and the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/safetensors.h"
#include "model/llama_model.h"
#include "test_paths.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;

// A scratch copy of tiny-llama2-mha whose files each test may edit.
class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qserve_load_errors_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const fs::path src = test::model_dir("tiny-llama2-mha");
    fs::copy_file(src / "config.json", dir_ / "config.json");
    fs::copy_file(src / "model.safetensors", dir_ / "model.safetensors");
    for (auto& e : fs::directory_iterator(dir_)) {
      fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write);
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  nlohmann::json config() {
    std::ifstream in(dir_ / "config.json");
    return nlohmann::json::parse(in);
  }
  void write_config(const nlohmann::json& j) { std::ofstream(dir_ / "config.json") << j.dump(2); }

  // Rewrites model.safetensors with `edit` applied to the list of tensors.
  void rewrite_tensors(const std::function<void(std::vector<SafetensorsWriteItem>&,
                                                std::vector<std::string>&)>& edit) {
    std::vector<SafetensorsWriteItem> items;
    std::vector<std::string> storage;  // owns edited bytes
    {
      auto f = SafetensorsFile::open((dir_ / "model.safetensors").string());
      storage.reserve(f->header().tensors.size() + 8);
      for (const auto& [name, e] : f->header().tensors) {
        Tensor t = f->get(name);
        storage.emplace_back(static_cast<const char*>(t.raw()), t.nbytes());
        items.push_back({name, e.dtype, e.shape, {}});
      }
      for (size_t i = 0; i < items.size(); ++i) items[i].bytes = storage[i];
      edit(items, storage);
    }
    write_safetensors((dir_ / "model.safetensors").string(), items);
  }

  std::string load_error() {
    try {
      LlamaModel::load(dir_.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

TEST_F(BrokenCheckpoint, LoadsWhenIntact) { EXPECT_EQ(load_error(), ""); }

TEST_F(BrokenCheckpoint, UnknownArchitecture) {
  auto j = config();
  j["architectures"] = {"GPTNeoXForCausalLM"};
  write_config(j);
  const std::string err = load_error();
  EXPECT_NE(err.find("GPTNeoXForCausalLM"), std::string::npos) << err;
}

TEST_F(BrokenCheckpoint, ShapeMismatchWithConfig) {
  auto j = config();
  j["intermediate_size"] = 640;
  write_config(j);
  const std::string err = load_error();
  EXPECT_NE(err.find("mlp.gate_proj.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("[512, 256]"), std::string::npos) << err;
  EXPECT_NE(err.find("expected [640, 256]"), std::string::npos) << err;
}

TEST_F(BrokenCheckpoint, WrongDtype) {
  rewrite_tensors([](auto& items, auto& storage) {
    for (auto& it : items) {
      if (it.name == "model.norm.weight") {
        storage.emplace_back(it.bytes.size() * 2, '\0');  // same count of I32 elements
        it.dtype = DType::I32;
        it.bytes = storage.back();
      }
    }
  });
  const std::string err = load_error();
  EXPECT_NE(err.find("model.norm.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("I32"), std::string::npos) << err;
}

TEST_F(BrokenCheckpoint, MissingTensor) {
  rewrite_tensors([](auto& items, auto&) {
    std::erase_if(items, [](const SafetensorsWriteItem& it) {
      return it.name == "model.layers.1.self_attn.k_proj.weight";
    });
  });
  const std::string err = load_error();
  EXPECT_NE(err.find("model.layers.1.self_attn.k_proj.weight"), std::string::npos) << err;
  EXPECT_NE(err.find(dir_.string()), std::string::npos) << err;
}

TEST_F(BrokenCheckpoint, MissingLmHeadWithoutTying) {
  rewrite_tensors([](auto& items, auto&) {
    std::erase_if(items, [](const SafetensorsWriteItem& it) { return it.name == "lm_head.weight"; });
  });
  const std::string err = load_error();
  EXPECT_NE(err.find("lm_head.weight"), std::string::npos) << err;
}

TEST_F(BrokenCheckpoint, MissingConfig) {
  fs::remove(dir_ / "config.json");
  const std::string err = load_error();
  EXPECT_NE(err.find("config.json"), std::string::npos) << err;
}

TEST_F(BrokenCheckpoint, TruncatedWeights) {
  fs::resize_file(dir_ / "model.safetensors", fs::file_size(dir_ / "model.safetensors") / 2);
  const std::string err = load_error();
  EXPECT_NE(err.find("model.safetensors"), std::string::npos) << err;
}

}  // namespace
}  // namespace qserve
