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
void add_convert(CLI::App& app);
void add_quantize(CLI::App& app);
void add_serve(CLI::App& app);
void add_bench_serve(CLI::App& app);

// A model and its tokenizer (null for synthetic models), from a folder or "synthetic:NAME",
// at the precision in `opts` (quantized at load).
struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};
// tokenizer_dir: take the tokenizer from this folder instead; with a synthetic model its
// vocabulary size replaces the synthetic config's (every id the model emits then decodes).
LoadedModel load_model(const std::string& spec, bool need_tokenizer, const LoadOptions& opts = {},
                       const std::string& tokenizer_dir = "");

// The --precision option (and, with `norm_flag`, --qserve-norm) of a subcommand. options()
// parses the spelling when the command runs, so a bad one is a one-line qserve::Error that
// lists the valid spellings.
struct PrecisionArgs {
  std::string precision = "w16a16kv16";
  bool qserve_norm = false;
  std::optional<bool> qserve_numerics;  // --qserve-numerics / --no-qserve-numerics
  LoadOptions options() const;
};
void add_precision_options(CLI::App* cmd, PrecisionArgs& args, bool norm_flag);

// Expands C-style escapes (\n, \t, \r, \\) in command-line strings such as separators.
std::string unescape(const std::string& s);

}  // namespace qserve::cli
