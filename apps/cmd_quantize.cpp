// qserve quantize: the QoQ quantizer (src/qoq, docs/quantization.md) from an HF folder to our
// quantized checkpoint.
#include <array>
#include <cstdio>

#include "commands.h"
#include "qoq/pipeline.h"

namespace qserve::cli {

void add_quantize(CLI::App& app) {
  auto o = std::make_shared<qoq::QuantizeOptions>();
  auto alpha = std::make_shared<double>(-1.0);
  auto beta = std::make_shared<double>(-1.0);
  auto no =
      std::make_shared<std::array<bool, 6>>();  // gptq, rotation, reorder, smooth, clip, progress
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "QoQ-quantize an HF fp16/bf16 Llama-family folder (W4A8KV4 g128/per-channel, W8A8)");
  cmd->add_option("--model", o->model_dir, "HuggingFace model folder (fp16/bf16/fp32)")->required();
  cmd->add_option("--out", o->out_dir, "Output folder")->required();
  cmd->add_option("--scheme", o->scheme, "w4a8kv4-g128 (default) | w4a8kv4 | w8a8kv8");
  cmd->add_option("--calib", o->calib_path,
                  "Calibration text: plain text (one document per line, or split at "
                  "--calib-separator) or .jsonl with a \"text\" field")
      ->required();
  cmd->add_option("--calib-separator", o->calib_separator,
                  "Document separator of a plain-text --calib file (escapes like \\n allowed)");
  cmd->add_option("--samples", o->samples, "Calibration samples (default 128)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", o->seq_len, "Tokens per calibration sample (default 1024)")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--seed", o->seed, "Seed of the calibration sampling (default 42)");
  cmd->add_option("--alpha", *alpha, "down_proj smoothing exponent on activations")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--beta", *beta, "down_proj smoothing exponent on weights")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--smooth-attn", o->smooth_attn,
                  "SmoothAttention: manual (lambda = sqrt(max|K|), default) | search | none");
  cmd->add_flag("--no-gptq", (*no)[0], "Round to nearest instead of GPTQ");
  cmd->add_flag("--no-rotation", (*no)[1], "No Hadamard rotations");
  cmd->add_flag("--no-reorder", (*no)[2], "No channel reordering (g128)");
  cmd->add_flag("--no-smooth", (*no)[3], "No down_proj smoothing");
  cmd->add_flag("--no-clip", (*no)[4], "No clipping search (per-channel)");
  cmd->add_flag("--quiet", (*no)[5], "No progress line");
  cmd->add_option("--device", o->device, "cpu (the only device implemented)");
  cmd->callback([o, alpha, beta, no] {
    if (*alpha >= 0) o->alpha = *alpha;
    if (*beta >= 0) o->beta = *beta;
    o->calib_separator = unescape(o->calib_separator);
    o->gptq = !(*no)[0];
    o->rotation = !(*no)[1];
    o->reorder = !(*no)[2];
    o->smooth_down = !(*no)[3];
    o->clip_search = !(*no)[4];
    o->progress = !(*no)[5];
    const nlohmann::json r = qoq::quantize_model(*o);
    std::printf("wrote %s (%s): %lld layers, %lld calibration tokens, %.1f s, peak RSS %.0f MiB\n",
                o->out_dir.c_str(), o->scheme.c_str(), static_cast<long long>(r["layers"].size()),
                static_cast<long long>(r["calibration"]["tokens"].get<int64_t>()),
                r["seconds"]["total"].get<double>(), r["peak_rss_mib"].get<double>());
  });
}

}  // namespace qserve::cli
