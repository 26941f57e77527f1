#include "engine_options.h"

#include "core/error.h"
#include "core/thread_pool.h"
#ifdef QSERVE_WITH_CUDA
#include "backend/cuda/cuda_device.h"
#include "engine_cuda/cuda_executor.h"
#endif

namespace qserve::cli {

EngineConfig EngineArgs::config(int64_t default_max_num_seqs) const {
  EngineConfig c;
  c.max_num_seqs = max_num_seqs > 0 ? max_num_seqs : default_max_num_seqs;
  c.max_num_batched_tokens = max_num_batched_tokens;
  c.max_model_len = max_model_len;
  c.num_pages = num_pages;
  c.chunked_prefill = !no_chunked_prefill;
  c.cuda_graphs = !no_cuda_graphs;
  c.overlap_steps = !no_overlap;
  return c;
}

void add_engine_options(CLI::App* cmd, EngineArgs& a) {
  cmd->add_option("--max-num-seqs", a.max_num_seqs, "Sequences running at once")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-num-batched-tokens", a.max_num_batched_tokens,
                  "Tokens per engine step (prefill chunks + decodes; default max(2048, "
                  "max-num-seqs))")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-model-len", a.max_model_len,
                  "Context limit (default: the model's max_position_embeddings)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--num-gpu-page-blocks", a.num_pages,
                  "KV-cache pages of 64 tokens (default: env NUM_GPU_PAGE_BLOCKS, else sized "
                  "from free memory)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--device", a.device,
                  "auto (cuda when a GPU is visible), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_flag("--no-chunked-prefill", a.no_chunked_prefill,
                "Prefill each prompt in one step (it waits until it fits the token budget)");
  cmd->add_flag("--no-cuda-graphs", a.no_cuda_graphs,
                "CUDA: launch decode steps kernel by kernel instead of replaying captured CUDA "
                "graphs (same results; --profile always does)");
  cmd->add_flag("--no-overlap", a.no_overlap,
                "Wait for each decode step before scheduling the next, instead of launching "
                "it while the previous one runs (same results; docs/engine.md)");
}

void add_qserve_numerics_option(CLI::App* cmd, std::optional<bool>& value) {
  // Two flags rather than a bool option so that "neither" keeps the checkpoint's default.
  CLI::Option* on = cmd->add_flag_callback(
      "--qserve-numerics", [&value] { value = true; },
      "Round activations to fp16 where QServe does (default for QServe zoo / converted "
      "checkpoints)");
  CLI::Option* off = cmd->add_flag_callback(
      "--no-qserve-numerics", [&value] { value = false; },
      "Keep activations in fp32 between ops (default for other models)");
  on->excludes(off);
}

std::string resolve_device(const std::string& device) {
  check(device == "auto" || device == "cpu" || device == "cuda",
        "--device must be auto, cpu or cuda, got '" + device + "'");
#ifdef QSERVE_WITH_CUDA
  const bool gpu = cuda::device_count() > 0;
  if (device == "auto") return gpu ? "cuda" : "cpu";
  check(device == "cpu" || gpu, "--device cuda: no CUDA device is visible (" +
                                    cuda::device_summary() + ")");
  return device;
#else
  check(device != "cuda", "--device cuda: this build has no CUDA backend (build with nvcc found)");
  return "cpu";
#endif
}

std::string device_description(const std::string& resolved_device) {
#ifdef QSERVE_WITH_CUDA
  if (resolved_device == "cuda") return cuda::device_summary();
#else
  (void)resolved_device;
#endif
  return "cpu (" + std::to_string(ThreadPool::global().size()) + " threads)";
}

std::unique_ptr<Engine> make_engine(const LlamaModel& model, const Tokenizer* tokenizer,
                                    const EngineConfig& cfg, const std::string& device) {
#ifdef QSERVE_WITH_CUDA
  if (resolve_device(device) == "cuda") return create_cuda_engine(model, tokenizer, cfg);
#else
  resolve_device(device);
#endif
  return Engine::create(model, tokenizer, cfg);
}

SamplingParams SamplingArgs::params() const {
  SamplingParams p;
  p.max_tokens = max_tokens;
  p.min_tokens = min_tokens;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.seed = seed;
  p.stop = stop;
  p.stop_token_ids = stop_token_ids;
  p.ignore_eos = ignore_eos;
  return p;
}

void add_sampling_options(CLI::App* cmd, SamplingArgs& a) {
  cmd->add_option("--max-tokens", a.max_tokens, "Tokens to generate per request")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--min-tokens", a.min_tokens, "No EOS/stop before this many tokens")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", a.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", a.top_k, "Top-k sampling (0 = off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a.top_p, "Nucleus sampling (1 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", a.min_p, "Min-p sampling (0 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", a.seed, "Sampling seed");
  cmd->add_option("--stop", a.stop, "Stop string (repeatable); never included in the output");
  cmd->add_option("--stop-token-id", a.stop_token_ids, "Stop token id (repeatable)");
  cmd->add_flag("--ignore-eos", a.ignore_eos, "Keep generating past EOS");
}

}  // namespace qserve::cli
