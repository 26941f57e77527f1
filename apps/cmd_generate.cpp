// qserve generate: one prompt in, its continuation out (streamed, or as JSON).
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "engine/generate.h"

namespace qserve::cli {

namespace {
struct GenerateArgs {
  std::string model;
  std::string prompt;
  int64_t max_tokens = 128;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool json = false;
  bool no_special = false;
  bool ignore_eos = false;
  PrecisionArgs precision;
};
}  // namespace

void add_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate a continuation of one prompt");
  cmd->add_option("--model", args->model, "HuggingFace model folder")->required();
  cmd->add_option("--prompt", args->prompt, "Prompt text")->required();
  cmd->add_option("--max-tokens", args->max_tokens, "Tokens to generate")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", args->temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", args->top_k, "Top-k sampling (0 = off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling (1 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", args->seed, "Sampling seed");
  cmd->add_flag("--json", args->json, R"(Print {"text": ..., "token_ids": [...]})");
  cmd->add_flag("--no-special", args->no_special, "Do not add BOS/special tokens to the prompt");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past EOS");
  add_precision_options(cmd, args->precision, /*norm_flag=*/true);
  cmd->callback([args] {
    LoadedModel m = load_model(args->model, /*need_tokenizer=*/true, args->precision.options());
    GenerateOptions opts;
    opts.max_tokens = args->max_tokens;
    opts.sampling.temperature = args->temperature;
    opts.sampling.top_k = args->top_k;
    opts.sampling.top_p = args->top_p;
    opts.sampling.seed = args->seed;
    opts.stop_at_eos = !args->ignore_eos;
    const std::vector<int32_t> ids = m.tokenizer->encode(args->prompt, !args->no_special);
    if (args->json) {
      GenerateResult r = generate(*m.model, m.tokenizer.get(), ids, opts);
      nlohmann::json j = {{"text", r.text},
                          {"token_ids", r.token_ids},
                          {"finish_reason", r.finish_reason},
                          {"prompt_tokens", ids.size()}};
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      generate(*m.model, m.tokenizer.get(), ids, opts, [](const std::string& piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      });
      std::printf("\n");
    }
  });
}

}  // namespace qserve::cli
