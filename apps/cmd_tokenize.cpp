// qserve tokenize: text in, JSON array of ids out.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"

namespace qserve::cli {

void add_tokenize(CLI::App& app) {
  struct Args {
    std::string model, text;
    bool no_special = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text as JSON");
  cmd->add_option("--model", args->model, "Model folder with tokenizer.json or tokenizer.model")
      ->required();
  cmd->add_option("--text", args->text, "Text to tokenize")->required();
  cmd->add_flag("--no-special", args->no_special, "Do not add special tokens (BOS)");
  cmd->callback([args] {
    std::unique_ptr<Tokenizer> tok = load_tokenizer(args->model);
    nlohmann::json j = tok->encode(args->text, !args->no_special);
    std::printf("%s\n", j.dump().c_str());
  });
}

}  // namespace qserve::cli
