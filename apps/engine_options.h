// Flags shared by the commands that drive the Engine (generate, bench, later serve): engine
// sizing and default sampling parameters.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine/engine.h"
#include "engine/sampling.h"

namespace qserve::cli {

struct EngineArgs {
  int64_t max_num_seqs = 0;            // 0: the command's default
  int64_t max_num_batched_tokens = 0;  // 0: the engine's default
  int64_t max_model_len = 0;
  std::optional<int64_t> num_pages;
  bool no_chunked_prefill = false;
  bool no_cuda_graphs = false;  // --no-cuda-graphs: launch decode steps op by op
  bool no_overlap = false;      // --no-overlap: EngineConfig::overlap_steps off
  std::string device = "auto";  // auto | cpu | cuda
  EngineConfig config(int64_t default_max_num_seqs) const;
};

// "cpu" or "cuda": --device auto means cuda when this build has the CUDA backend and a GPU is
// visible. Throws for an unknown name or cuda without a GPU / without the CUDA build.
std::string resolve_device(const std::string& device);
// "cpu (N threads)" or the GPU's name and memory, for reports.
std::string device_description(const std::string& resolved_device);
// An engine over `model` on the resolved device.
std::unique_ptr<Engine> make_engine(const LlamaModel& model, const Tokenizer* tokenizer,
                                    const EngineConfig& cfg, const std::string& device);
void add_engine_options(CLI::App* cmd, EngineArgs& args);

// --qserve-numerics / --no-qserve-numerics (LoadOptions::qserve_numerics, docs/checkpoints.md):
// round activations to fp16 where QServe does. Left unset without either flag: the loader's
// default (on for QServe zoo and converted checkpoints, off otherwise). For the commands that
// load a model (generate, perplexity); copy `value` into LoadOptions::qserve_numerics.
void add_qserve_numerics_option(CLI::App* cmd, std::optional<bool>& value);

struct SamplingArgs {
  int64_t max_tokens = 128;
  int64_t min_tokens = 0;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  SamplingParams params() const;
};
void add_sampling_options(CLI::App* cmd, SamplingArgs& args);

}  // namespace qserve::cli
