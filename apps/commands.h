// Registration of the CLI subcommands; each lives in its own cmd_*.cpp.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "model/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace qserve::cli {

void add_generate(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_inspect(CLI::App& app);
void add_bench(CLI::App& app);

// A model and its tokenizer (null for synthetic models), from a folder or "synthetic:NAME".
struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};
LoadedModel load_model(const std::string& spec, bool need_tokenizer);

// Expands C-style escapes (\n, \t, \r, \\) in command-line strings such as separators.
std::string unescape(const std::string& s);

}  // namespace qserve::cli
