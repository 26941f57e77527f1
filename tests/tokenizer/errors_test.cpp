// Malformed input is a qserve::Error whose message names the file and the problem, never a crash
// or a foreign exception type.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "tokenizer_test_util.h"

namespace qserve {
namespace {

// Expects load_tokenizer_json_string(json) to throw an Error mentioning source and `what`.
void expect_json_error(const std::string& json, const std::string& what) {
  SCOPED_TRACE(json.substr(0, 200));
  try {
    load_tokenizer_json_string(json, "broken/tokenizer.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("broken/tokenizer.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

// A tokenizer.json with the given model and, optionally, one component replaced.
std::string with_model(const std::string& model, const std::string& component = "",
                       const std::string& value = "null") {
  nlohmann::json j = {{"version", "1.0"},          {"added_tokens", nlohmann::json::array()},
                      {"normalizer", nullptr},     {"pre_tokenizer", nullptr},
                      {"post_processor", nullptr}, {"decoder", nullptr}};
  j["model"] = nlohmann::json::parse(model);
  if (!component.empty()) j[component] = nlohmann::json::parse(value);
  return j.dump();
}

const std::string kGoodModel = R"({"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]})";

TEST(TokenizerErrors, MalformedTokenizerJson) {
  expect_json_error("this is not json", "not valid JSON");
  expect_json_error("{\"model\": ", "not valid JSON");
  expect_json_error("[]", "object");
  expect_json_error(R"({"version":"1.0"})", "missing 'model'");
  expect_json_error(with_model(R"({"type":"Unigram","vocab":[]})"), "model type 'Unigram'");
  expect_json_error(with_model(R"({"type":"WordPiece","vocab":{}})"), "not supported");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{"a":0},"merges":["a b"]})"),
                    "token 'b' is not in the vocab");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{"a":0,"b":1},"merges":[["a","b"]]})"),
                    "merged token 'ab' is not in the vocab");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{"a":0},"merges":["a b c"]})"),
                    "merges[0]");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{"a":-1},"merges":[]})"), "token id");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{"a":"x"},"merges":[]})"), "token id");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{"a":2000000000},"merges":[]})"), "sparse");
  expect_json_error(with_model(R"({"type":"BPE","vocab":[],"merges":[]})"), "model.vocab");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{},"merges":5})"), "model.merges");
  expect_json_error(with_model(R"({"type":"BPE","vocab":{},"merges":[],"unk_token":"<unk>"})"),
                    "unk_token");
  expect_json_error(
      with_model(kGoodModel, "pre_tokenizer",
                 R"({"type":"Split","pattern":{"Regex":"(unclosed"},"behavior":"Isolated"})"),
      "invalid regex");
  expect_json_error(with_model(kGoodModel, "pre_tokenizer",
                               R"({"type":"Split","pattern":{"Regex":"a"},"behavior":"Sideways"})"),
                    "behavior");
  expect_json_error(with_model(kGoodModel, "pre_tokenizer", R"({"type":"BertPreTokenizer"})"),
                    "pre_tokenizer type 'BertPreTokenizer'");
  expect_json_error(with_model(kGoodModel, "normalizer", R"({"type":"NFC"})"),
                    "normalizer type 'NFC' is not supported");
  expect_json_error(with_model(kGoodModel, "normalizer", R"({"type":"Prepend"})"), "prepend");
  expect_json_error(with_model(kGoodModel, "decoder", R"({"type":"WordPiece"})"),
                    "decoder type 'WordPiece'");
  expect_json_error(with_model(kGoodModel, "post_processor",
                               R"({"type":"TemplateProcessing","special_tokens":{},
              "single":[{"SpecialToken":{"id":"<s>","type_id":0}},
                        {"Sequence":{"id":"A","type_id":0}}]})"),
                    "'<s>' is not in special_tokens");
  expect_json_error(R"({"added_tokens":[{"content":7,"id":1}],"model":)" + kGoodModel + "}",
                    "added_tokens[0].content");
  expect_json_error(R"({"model":{"type":"BPE","vocab":{"a":0}}})", "missing 'merges'");
  // Deep nesting is refused before it can exhaust the stack.
  std::string deep = R"({"type":"Fuse"})";
  for (int i = 0; i < 100; ++i) deep = R"({"type":"Sequence","decoders":[)" + deep + "]}";
  expect_json_error(with_model(kGoodModel, "decoder", deep), "nested more than 32 deep");
  // Wrong JSON types deep inside are Errors too, not nlohmann exceptions.
  expect_json_error(with_model(kGoodModel, "normalizer", R"({"type":"Strip","strip_left":"yes"})"),
                    "strip_left");
  expect_json_error(with_model(kGoodModel, "decoder", R"({"type":"Strip","content":"ab"})"),
                    "one character");
}

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("qserve_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
             "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_.string(); }
  void write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
  }

 private:
  std::filesystem::path path_;
};

void expect_dir_error(const std::string& dir, const std::string& file, const std::string& what) {
  try {
    load_tokenizer(dir);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

TEST(TokenizerErrors, MissingAndBrokenFiles) {
  TempDir dir;
  expect_dir_error(dir.path(), dir.path(), "no tokenizer.json or tokenizer.model");
  expect_dir_error(dir.path() + "/does-not-exist", "does-not-exist", "no tokenizer.json");

  dir.write("tokenizer.model", "definitely not a protobuf");
  expect_dir_error(dir.path(), "tokenizer.model", "cannot load SentencePiece model");

  dir.write("tokenizer.json", "{ broken");
  expect_dir_error(dir.path(), "tokenizer.json", "not valid JSON");

  dir.write("tokenizer.json", with_model(kGoodModel));
  dir.write("tokenizer_config.json", "[1, 2");
  expect_dir_error(dir.path(), "tokenizer_config.json", "not valid JSON");
  dir.write("tokenizer_config.json", R"({"bos_token": "<nope>"})");
  expect_dir_error(dir.path(), "tokenizer_config.json", "'<nope>' is not in the vocab");
  dir.write("tokenizer_config.json", R"({"eos_token": {"no_content": 1}})");
  expect_dir_error(dir.path(), "tokenizer_config.json", "content");

  dir.write("tokenizer_config.json", R"({"eos_token": "a"})");
  dir.write("generation_config.json", R"({"eos_token_id": "x"})");
  expect_dir_error(dir.path(), "generation_config.json", "eos_token_id");
  dir.write("generation_config.json", R"({"eos_token_id": [1, 0, -1], "bos_token_id": 2})");
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->eos_ids(), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(tok->bos_id(), 2);
  EXPECT_EQ(tok->encode("ab", true), std::vector<int32_t>{2});
}

}  // namespace
}  // namespace qserve
