// qserve generate: one prompt (streamed, or as JSON), or a JSONL dataset of prompts and
// conversations through the in-flight batching engine (outputs JSONL, progress, summary).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "engine/chat_template.h"
#include "engine/dataset.h"
#include "engine/engine.h"
#include "engine_options.h"

namespace qserve::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt;
  std::string dataset;
  std::string output;
  std::string chat_template;
  bool chat = false;
  bool json = false;
  bool no_special = false;
  bool quiet = false;
  PrecisionArgs precision;
  EngineArgs engine;
  SamplingArgs sampling;
};

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The template's special-token strings, as the tokenizer spells them.
std::string token_text(const Tokenizer& tok, std::optional<int32_t> id) {
  if (!id) return {};
  const int32_t v = *id;
  return tok.decode({&v, 1}, /*skip_special_tokens=*/false);
}

// The model's own Jinja chat template, or a built-in (--chat-template NAME|FILE.jinja, or
// inferred when the folder has none); the tokenizer's BOS/EOS fill in what the folder's
// tokenizer_config.json does not name.
ChatFormatter pick_formatter(const GenerateArgs& a, const Tokenizer& tok) {
  const std::optional<int32_t> eos =
      tok.eos_ids().empty() ? std::nullopt : std::optional<int32_t>(tok.eos_ids().front());
  return ChatFormatter::for_model(a.model, a.chat_template, token_text(tok, tok.bos_id()),
                                  token_text(tok, eos));
}

std::vector<int32_t> encode_chat(const Tokenizer& tok, const ChatFormatter& f,
                                 std::span<const ChatMessage> msgs) {
  const std::string text = f.render(msgs, /*add_generation_prompt=*/true);
  // The rendered text carries BOS where the template has it.
  return tok.encode(text, /*add_special_tokens=*/false);
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

void run_single(const GenerateArgs& a, LoadedModel& m) {
  const Tokenizer& tok = *m.tokenizer;
  std::vector<int32_t> ids;
  if (a.chat) {
    const ChatMessage msg{"user", a.prompt};
    ids = encode_chat(tok, pick_formatter(a, tok), {&msg, 1});
  } else {
    ids = tok.encode(a.prompt, !a.no_special);
  }
  auto engine = make_engine(*m.model, &tok, a.engine.config(1), a.engine.device);
  RequestOutput final_out;
  std::vector<int32_t> out_ids;
  std::string text;
  engine->add_request(ids, a.sampling.params(), [&](const RequestOutput& o) {
    out_ids.insert(out_ids.end(), o.token_ids.begin(), o.token_ids.end());
    text += o.text;
    if (!a.json) {
      std::fwrite(o.text.data(), 1, o.text.size(), stdout);
      std::fflush(stdout);
    }
    if (o.finished) final_out = o;
  });
  while (engine->has_unfinished()) engine->step();
  if (a.json) {
    nlohmann::json j = {{"text", text},
                        {"token_ids", out_ids},
                        {"finish_reason", final_out.finish_reason},
                        {"prompt_tokens", ids.size()},
                        {"completion_tokens", final_out.completion_tokens}};
    if (!final_out.stop_reason.empty()) j["stop_reason"] = final_out.stop_reason;
    std::printf("%s\n", dump(j).c_str());
  } else {
    std::printf("\n");
  }
}

void run_dataset(const GenerateArgs& a, LoadedModel& m) {
  const Tokenizer& tok = *m.tokenizer;
  const std::vector<DatasetRow> rows = read_prompt_dataset(a.dataset);
  check(!rows.empty(), a.dataset + ": no rows");
  // Prepare every request first: a bad row stops the run before any work is done.
  std::optional<ChatFormatter> formatter;
  std::vector<GenerationRequest> reqs;
  const SamplingParams defaults = a.sampling.params();
  for (const DatasetRow& row : rows) {
    const std::string where = a.dataset + ":" + std::to_string(row.line);
    GenerationRequest r;
    if (row.prompt) {
      r.prompt_ids = tok.encode(*row.prompt, !a.no_special);
    } else {
      if (!formatter) formatter = pick_formatter(a, tok);
      try {
        r.prompt_ids = encode_chat(tok, *formatter, row.conversation);
      } catch (const Error& e) {
        throw Error(where + ": " + e.what());
      }
    }
    r.params = apply_sampling_fields(defaults, row.sampling, where);
    validate(r.params);
    reqs.push_back(std::move(r));
  }
  auto engine = make_engine(*m.model, &tok, a.engine.config(64), a.engine.device);
  std::FILE* out = stdout;
  if (!a.output.empty()) {
    out = std::fopen(a.output.c_str(), "w");
    check(out != nullptr, a.output + ": cannot open for writing");
  }
  const bool tty = isatty(STDERR_FILENO) != 0 && !a.quiet;
  const auto t0 = std::chrono::steady_clock::now();
  size_t done = 0;
  int64_t out_tokens = 0;
  std::vector<double> ttft, tpot, latency;
  const auto on_done = [&](const CompletedRequest& c) {
    ++done;
    const int64_t n = static_cast<int64_t>(c.token_ids.size());
    out_tokens += n;
    ttft.push_back(c.ttft_s);
    latency.push_back(c.latency_s);
    if (n > 1) tpot.push_back((c.latency_s - c.ttft_s) / static_cast<double>(n - 1));
    if (tty) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int width = 30;
      const int filled = static_cast<int>(width * done / rows.size());
      std::fprintf(stderr, "\r[%s%s] %zu/%zu requests, %.1f output tok/s",
                   std::string(static_cast<size_t>(filled), '#').c_str(),
                   std::string(static_cast<size_t>(width - filled), '.').c_str(), done, rows.size(),
                   static_cast<double>(out_tokens) / std::max(secs, 1e-9));
    }
  };
  const std::vector<CompletedRequest> results = generate(*engine, reqs, on_done);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (tty) std::fprintf(stderr, "\n");
  for (size_t i = 0; i < results.size(); ++i) {
    const CompletedRequest& c = results[i];
    nlohmann::json j = {{"id", rows[i].id},
                        {"line", rows[i].line},
                        {"text", c.text},
                        {"finish_reason", c.finish_reason},
                        {"prompt_tokens", c.prompt_tokens},
                        {"completion_tokens", c.token_ids.size()},
                        {"ttft_s", c.ttft_s},
                        {"latency_s", c.latency_s}};
    if (!c.stop_reason.empty()) j["stop_reason"] = c.stop_reason;
    std::fprintf(out, "%s\n", dump(j).c_str());
  }
  if (out != stdout) std::fclose(out);
  std::fprintf(stderr,
               "%zu requests in %.2f s: %.2f requests/s, %.1f output tok/s; TTFT p50 %.3f s "
               "p99 %.3f s; TPOT p50 %.4f s p99 %.4f s; %lld preemptions\n",
               results.size(), secs, static_cast<double>(results.size()) / secs,
               static_cast<double>(out_tokens) / secs, percentile(ttft, 0.5),
               percentile(ttft, 0.99), percentile(tpot, 0.5), percentile(tpot, 0.99),
               static_cast<long long>(engine->stats().preemptions));
}

}  // namespace

void add_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Generate a continuation of one prompt, or of every row of a JSONL dataset");
  cmd->add_option("--model", args->model, "HuggingFace model folder")->required();
  auto* prompt = cmd->add_option("--prompt", args->prompt, "Prompt text");
  auto* dataset = cmd->add_option(
      "--dataset", args->dataset,
      R"(JSONL: rows {"prompt": ...} or {"conversation"|"messages": [{"role","content"},...]}, with optional per-row sampling fields)");
  prompt->excludes(dataset);
  cmd->add_option("--output", args->output,
                  "Write the dataset's results (JSONL) here (default stdout)");
  cmd->add_option("--chat-template", args->chat_template,
                  "A built-in template (llama-3, llama-2, mistral, chatml, vicuna) or a Jinja "
                  "template file (default: the model's own chat_template, else a built-in "
                  "inferred from config.json)");
  cmd->add_flag("--chat", args->chat, "Render --prompt as one user turn of the chat template");
  cmd->add_flag("--json", args->json, R"(Print {"text": ..., "token_ids": [...], ...})");
  cmd->add_flag("--no-special", args->no_special, "Do not add BOS/special tokens to plain prompts");
  cmd->add_flag("--quiet", args->quiet, "No progress bar");
  add_precision_options(cmd, args->precision, /*norm_flag=*/true);
  add_engine_options(cmd, args->engine);
  add_sampling_options(cmd, args->sampling);
  cmd->callback([args] {
    check(!args->prompt.empty() || !args->dataset.empty(), "generate: give --prompt or --dataset");
    LoadedModel m = load_model(args->model, /*need_tokenizer=*/true, args->precision.options());
    if (args->dataset.empty()) {
      run_single(*args, m);
    } else {
      run_dataset(*args, m);
    }
  });
}

}  // namespace qserve::cli
