// The QoQ pipeline, one decoder layer at a time (qoq/pipeline.h).
#include "qoq/pipeline.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "formats/safetensors.h"
#include "model/qserve_checkpoint.h"
#include "qoq/calibration.h"
#include "qoq/checkpoint_writer.h"
#include "qoq/layer_calibration.h"
#include "qoq/smooth_attention_search.h"
#include "qoq/transforms.h"
#include "quant/rtn_quantizers.h"
#include "tokenizer/tokenizer.h"

namespace qserve::qoq {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux: KiB
}

// Default down_proj smoothing (alpha on activations, beta on weights): DeepCompressor's YAML
// defaults for g128 (0.3 / 0.7) and per-channel (0.1 / 0.9); W8A8 reuses g128's.
std::pair<double, double> default_alpha_beta(WeightScheme s) {
  return s == WeightScheme::kW4PerChannel ? std::pair{0.1, 0.9} : std::pair{0.3, 0.7};
}

// Rows [r0, r0 + n) of a quantized linear (the fused q/k/v or gate/up split back).
QuantizedLinear slice_rows(const QuantizedLinear& q, int64_t r0, int64_t n) {
  QuantizedLinear out = q;
  std::visit(
      [&](auto& w) {
        using W = std::decay_t<decltype(w)>;
        const int64_t k = w.k;
        auto cut = [&](auto& v, int64_t per_row) {
          using V = std::decay_t<decltype(v)>;
          v = V(v.begin() + r0 * per_row, v.begin() + (r0 + n) * per_row);
        };
        if constexpr (std::is_same_v<W, quant::W8PerChannel>) {
          cut(w.w, k);
          cut(w.dequant_scale, 1);
        } else if constexpr (std::is_same_v<W, quant::W4PerChannel>) {
          cut(w.q, k);
          cut(w.s1_scales, 1);
          cut(w.s1_szeros, 1);
        } else {
          cut(w.q, k);
          cut(w.s1_scales, 1);
          cut(w.s2_scales, k / quant::kGroupSize);
          cut(w.s2_zeros, k / quant::kGroupSize);
        }
        w.n = n;
      },
      out.w);
  return out;
}

nlohmann::json linear_stats(const QuantizedLinear& q) {
  nlohmann::json j = {{"weight_rel_error", q.weight_rel_error},
                      {"output_rel_error", q.output_rel_error},
                      {"gptq_retries", q.gptq.retries},
                      {"dead_columns", q.gptq.dead_columns}};
  if (std::holds_alternative<quant::W4PerChannel>(q.w)) j["mean_clip_ratio"] = q.mean_clip_ratio;
  return j;
}

nlohmann::json range_of(const std::vector<float>& v) {
  if (v.empty()) return nullptr;
  auto [mn, mx] = std::minmax_element(v.begin(), v.end());
  return {{"min", *mn}, {"max", *mx}};
}

void copy_side_files(const std::string& from, const std::string& to, bool untied) {
  for (const auto& e : fs::directory_iterator(from)) {
    const std::string fn = e.path().filename().string();
    const bool json = e.path().extension() == ".json" && fn != "model.safetensors.index.json" &&
                      fn != "pytorch_model.bin.index.json" && fn != "quantization.json";
    if (!e.is_regular_file() || !(json || fn == "tokenizer.model")) continue;
    if (fn == "config.json" && untied) {
      // lm_head is stored separately now (it was rotated and the final norm folded into it).
      std::ifstream in(e.path());
      nlohmann::ordered_json j = nlohmann::ordered_json::parse(in);
      j["tie_word_embeddings"] = false;
      std::ofstream(fs::path(to) / fn) << j.dump(2) << "\n";
      continue;
    }
    fs::copy_file(e.path(), fs::path(to) / fn, fs::copy_options::overwrite_existing);
  }
}

class Progress {
 public:
  Progress(bool on, int64_t total) : on_(on), total_(total), start_(Clock::now()) {}
  void layer_done(int64_t done) const {
    if (!on_) return;
    const double el = since(start_);
    const double left =
        done > 0 ? el / static_cast<double>(done) * static_cast<double>(total_ - done) : 0.0;
    const int width = 30;
    const int fill = static_cast<int>(width * done / std::max<int64_t>(1, total_));
    std::string bar(static_cast<size_t>(fill), '#');
    bar.append(static_cast<size_t>(width - fill), '.');
    std::fprintf(stderr, "\rquantize: layer %lld/%lld [%s] %.1f s elapsed, ~%.1f s left   ",
                 static_cast<long long>(done), static_cast<long long>(total_), bar.c_str(), el,
                 left);
    if (done == total_) std::fprintf(stderr, "\n");
  }

 private:
  bool on_;
  int64_t total_;
  Clock::time_point start_;
};

}  // namespace

WeightScheme parse_scheme(const std::string& s) {
  if (s == "w4a8kv4-g128" || s == "w4a8g128kv4") return WeightScheme::kW4G128;
  if (s == "w4a8kv4") return WeightScheme::kW4PerChannel;
  if (s == "w8a8kv8") return WeightScheme::kW8;
  throw Error("quantize --scheme '" + s + "': valid schemes are w4a8kv4-g128, w4a8kv4, w8a8kv8");
}

ModelConfig validate_quantize(const QuantizeOptions& o) {
  check(o.device == "cpu",
        "quantize --device " + o.device +
            ": only 'cpu' is implemented (the quantizer has no CUDA path yet; run it on the CPU)");
  const WeightScheme scheme = parse_scheme(o.scheme);
  check(o.smooth_attn == "manual" || o.smooth_attn == "search" || o.smooth_attn == "none",
        "quantize --smooth-attn '" + o.smooth_attn + "': expected manual, search or none");
  check(!o.out_dir.empty(), "quantize: --out is required");
  check(!o.calib_path.empty(),
        "quantize: --calib FILE is required (plain text, or .jsonl with a \"text\" field); "
        "DeepCompressor's pile-val set is not bundled");
  check(o.samples >= 1 && o.seq_len >= 2, "quantize: --samples must be >= 1 and --seq-len >= 2");
  check(fs::is_directory(o.model_dir), o.model_dir + ": not a model folder");
  check(fs::weakly_canonical(o.model_dir) != fs::weakly_canonical(o.out_dir),
        "quantize: --out must differ from --model");
  check(fs::is_regular_file(o.calib_path), o.calib_path + ": calibration file not found");
  check(!detect_qserve_checkpoint(o.model_dir),
        o.model_dir + ": already a quantized checkpoint; quantize needs the fp16/bf16 HF folder");

  const ModelConfig cfg = load_hf_config(o.model_dir);
  const HeadShape hs = head_shape(cfg);
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size;
  check(hs.head_dim % 2 == 0 && hs.head_dim * hs.heads == cfg.q_dim(),
        o.model_dir + ": head_dim " + std::to_string(hs.head_dim) + " is not even");
  if (o.rotation) {
    check(has_hadamard(H), o.model_dir + ": hidden_size " + std::to_string(H) +
                               " has no supported Hadamard order (k * 2^m, k in {1, 12, 20, 28, "
                               "36, 60, 108, 140}); use --no-rotation");
    check(has_hadamard(hs.head_dim), o.model_dir + ": head_dim " + std::to_string(hs.head_dim) +
                                         " has no supported Hadamard order; use --no-rotation");
  }
  for (int64_t d : {H, I, cfg.q_dim(), cfg.kv_dim()}) {
    if (scheme != WeightScheme::kW8) {
      check(d % 32 == 0, o.model_dir + ": dimension " + std::to_string(d) +
                             " is not a multiple of 32, which QServe's W4 packing needs");
    }
  }
  if (scheme == WeightScheme::kW4G128) {
    for (int64_t k : {H, I, cfg.q_dim()}) {
      check(k % 128 == 0, o.model_dir + ": in_features " + std::to_string(k) +
                              " is not a multiple of 128; use --scheme w4a8kv4 (per-channel)");
    }
  }
  if (scheme == WeightScheme::kW8) {
    check(!cfg.qkv_bias && !cfg.o_bias && !cfg.mlp_bias,
          o.model_dir +
              ": the model has linear biases, which QServe's W8A8 format cannot hold; "
              "use a W4A8 scheme");
  }
  // Every tensor, before any work.
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(o.model_dir);
  auto need = [&](const std::string& name, const std::vector<int64_t>& shape) {
    check(ck.has(name), o.model_dir + ": checkpoint has no tensor '" + name + "'");
    const SafetensorsEntry& e = ck.entry(name);
    check(dtype_is_float(e.dtype), o.model_dir + ": tensor '" + name + "' is not a float tensor");
    check(e.shape == shape, o.model_dir + ": tensor '" + name + "' has shape " +
                                shape_to_string(e.shape) + ", expected " + shape_to_string(shape));
  };
  need("model.embed_tokens.weight", {cfg.vocab_size, H});
  need("model.norm.weight", {H});
  if (!cfg.tie_word_embeddings) need("lm_head.weight", {cfg.vocab_size, H});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    need(p + ".input_layernorm.weight", {H});
    need(p + ".post_attention_layernorm.weight", {H});
    const std::pair<const char*, std::vector<int64_t>> lin[] = {
        {".self_attn.q_proj", {cfg.q_dim(), H}},
        {".self_attn.k_proj", {cfg.kv_dim(), H}},
        {".self_attn.v_proj", {cfg.kv_dim(), H}},
        {".self_attn.o_proj", {H, cfg.q_dim()}},
        {".mlp.gate_proj", {I, H}},
        {".mlp.up_proj", {I, H}},
        {".mlp.down_proj", {H, I}}};
    for (const auto& [name, shape] : lin) need(p + name + ".weight", shape);
  }
  return cfg;
}

nlohmann::json quantize_model(const QuantizeOptions& o) {
  const auto t_start = Clock::now();
  const ModelConfig cfg = validate_quantize(o);
  const WeightScheme scheme = parse_scheme(o.scheme);
  const auto [alpha_default, beta_default] = default_alpha_beta(scheme);
  const double alpha = o.alpha.value_or(alpha_default), beta = o.beta.value_or(beta_default);
  const bool g128 = scheme == WeightScheme::kW4G128;
  const bool reorder = o.reorder && g128;
  const bool clip = o.clip_search && scheme == WeightScheme::kW4PerChannel;
  const HeadShape hs = head_shape(cfg);
  const int64_t H = cfg.hidden_size, V = cfg.vocab_size;

  nlohmann::json report;
  report["settings"] = {{"model", o.model_dir},
                        {"scheme", o.scheme},
                        {"calib", o.calib_path},
                        {"calib_separator", o.calib_separator},
                        {"samples", o.samples},
                        {"seq_len", o.seq_len},
                        {"seed", o.seed},
                        {"alpha", alpha},
                        {"beta", beta},
                        {"smooth_attn", o.smooth_attn},
                        {"smooth_down", o.smooth_down},
                        {"gptq", o.gptq},
                        {"gptq_damp", 0.01},
                        {"rotation", o.rotation},
                        {"reorder", reorder},
                        {"clip_search", clip},
                        {"protective_range", quant::kProtectiveRange},
                        {"device", o.device}};

  // Calibration tokens.
  const auto t_calib = Clock::now();
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(o.model_dir);
  const CalibrationSet calib =
      sample_calibration(*tok, read_calibration_documents(o.calib_path, o.calib_separator),
                         o.samples, o.seq_len, o.seed);
  for (const std::string& w : calib.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  for (int32_t t : calib.tokens) {
    check(t >= 0 && t < V,
          o.calib_path + ": token id " + std::to_string(t) +
              " is outside the model's vocabulary (tokenizer and config disagree)");
  }
  report["calibration"] = {{"samples", calib.samples},
                           {"seq_len", calib.seq_len},
                           {"tokens", calib.samples * calib.seq_len},
                           {"documents_used", calib.documents_used},
                           {"warnings", calib.warnings},
                           {"seconds", since(t_calib)}};

  fs::create_directories(o.out_dir);
  const std::map<std::string, std::string> meta{
      {kFormatKey, kFormatValue},
      {kSchemeKey, scheme_metadata_name(scheme)},
      {kGroupSizeKey, g128 ? "128" : "-1"},
      {kLayoutKey, "1"},
      {"source", "qserve quantize " + o.scheme + " from " + o.model_dir}};
  StreamingCheckpointWriter out((fs::path(o.out_dir) / kOurFile).string(),
                                checkpoint_tensor_specs(cfg, scheme), meta);
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(o.model_dir);
  std::optional<HadamardRotation> rot, rot_head;
  if (o.rotation) {
    rot.emplace(H);
    rot_head.emplace(hs.head_dim);
  }

  // Embeddings: rotated, written, and gathered into the first layer's inputs.
  const int64_t N = calib.samples * calib.seq_len;
  std::vector<float> x(static_cast<size_t>(N * H)), y(static_cast<size_t>(N * H));
  std::vector<float> lm_head_tied;
  double seconds_rotate = 0.0;
  {
    std::vector<float> embed = read_fp_tensor(ck, "model.embed_tokens.weight", {V, H}, o.model_dir);
    if (cfg.tie_word_embeddings) lm_head_tied = embed;  // untie before rotating
    const auto t = Clock::now();
    if (rot) rotate_rows(embed, *rot);
    seconds_rotate += since(t);
    out.write_f16("model.embed_tokens.weight", embed);
    for (int64_t i = 0; i < N; ++i) {
      std::copy_n(&embed[static_cast<size_t>(calib.tokens[i]) * H], H,
                  &x[static_cast<size_t>(i * H)]);
    }
  }

  const std::vector<float> inv_freq = cpu::rope_inv_freq(cfg);
  const std::vector<float> ones(static_cast<size_t>(H), 1.0f);
  WeightQuantOptions wq;
  wq.scheme = scheme;
  wq.gptq = o.gptq;
  wq.clip_search = clip;
  double seconds_calibrate = 0, seconds_reorder = 0, seconds_smooth_attn = 0, seconds_smooth = 0,
         seconds_quantize = 0;
  nlohmann::json layers = nlohmann::json::array();
  Progress progress(o.progress, cfg.num_layers);
  progress.layer_done(0);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    nlohmann::json lj = {{"layer", l}};
    const std::string p = "model.layers." + std::to_string(l);
    auto t = Clock::now();
    FpLayer L = read_fp_layer(ck, cfg, l, o.model_dir);
    fold_norms(L);
    if (rot) {
      rotate_residual(L, *rot);
      rotate_value_output(L, *rot_head, hs);
    }
    const double s_rot = since(t);
    seconds_rotate += s_rot;

    t = Clock::now();
    LayerCalibration c = calibrate_layer(L, cfg, inv_freq, x.data(), calib.samples, calib.seq_len,
                                         y.data(), {.hessians = o.gptq, .subsample = clip});
    const double s_cal = since(t);
    seconds_calibrate += s_cal;

    t = Clock::now();
    if (reorder) {
      const std::vector<int64_t> down_perm = ascending_order(c.down.absmax);
      reorder_down(L, down_perm);
      c.down.permute(down_perm);
      std::vector<int64_t> v_perm;
      const std::vector<int64_t> o_perm = o_proj_order(c.o.absmax, hs, v_perm);
      reorder_o(L, o_perm, v_perm);
      c.o.permute(o_perm);
    }
    const double s_reo = since(t);
    seconds_reorder += s_reo;

    t = Clock::now();
    if (o.smooth_attn != "none") {
      double sa_alpha = 0.5, sa_beta = 0.0;
      if (o.smooth_attn == "search") {
        const SmoothAttentionChoice ch = search_smooth_attention(
            L, cfg, inv_freq, x.data(), calib.samples, calib.seq_len, c.q_absmax, c.k_absmax);
        sa_alpha = ch.alpha;
        sa_beta = ch.beta;
        lj["smooth_attention_search"] = {{"alpha", ch.alpha},
                                         {"beta", ch.beta},
                                         {"error", ch.error},
                                         {"error_unsmoothed", ch.error_identity},
                                         {"samples", ch.samples}};
      }
      const std::vector<float> lambda =
          smooth_attention_scales(c.q_absmax, c.k_absmax, hs, sa_alpha, sa_beta);
      apply_smooth_attention(L, lambda, hs);
      lj["smooth_attention_lambda"] = range_of(lambda);
    }
    const double s_sa = since(t);
    seconds_smooth_attn += s_sa;

    t = Clock::now();
    if (o.smooth_down) {
      const std::vector<float> s = down_smoothing_scales(c.down.absmax, L.down, alpha, beta);
      apply_down_smoothing(L, s);
      c.down.divide(s);
      lj["down_smoothing_scale"] = range_of(s);
    }
    const double s_sm = since(t);
    seconds_smooth += s_sm;

    t = Clock::now();
    nlohmann::json lin;
    auto emit = [&](const std::string& name, const QuantizedLinear& q,
                    const std::vector<float>& bias) {
      out.write_linear(p + name, q);
      if (!bias.empty() && scheme != WeightScheme::kW8) out.write_f16(p + name + ".bias", bias);
    };
    {
      // q/k/v (and gate/up) share their inputs, hence one Hessian: quantized as one matrix
      // (every quantizer works row by row) and split.
      const QuantizedLinear q = quantize_linear(cpu::concat_linear({L.q, L.k, L.v}), c.qkv, wq);
      lin["qkv_proj"] = linear_stats(q);
      emit(".self_attn.q_proj", slice_rows(q, 0, L.q.n), L.q.bias);
      emit(".self_attn.k_proj", slice_rows(q, L.q.n, L.k.n), L.k.bias);
      emit(".self_attn.v_proj", slice_rows(q, L.q.n + L.k.n, L.v.n), L.v.bias);
    }
    {
      const QuantizedLinear q = quantize_linear(L.o, c.o, wq);
      lin["o_proj"] = linear_stats(q);
      emit(".self_attn.o_proj", q, L.o.bias);
    }
    {
      const QuantizedLinear q = quantize_linear(cpu::concat_linear({L.gate, L.up}), c.gate_up, wq);
      lin["gate_up_proj"] = linear_stats(q);
      emit(".mlp.gate_proj", slice_rows(q, 0, L.gate.n), L.gate.bias);
      emit(".mlp.up_proj", slice_rows(q, L.gate.n, L.up.n), L.up.bias);
    }
    {
      const QuantizedLinear q = quantize_linear(L.down, c.down, wq);
      lin["down_proj"] = linear_stats(q);
      emit(".mlp.down_proj", q, L.down.bias);
    }
    out.write_f16(p + ".input_layernorm.weight", ones);
    out.write_f16(p + ".post_attention_layernorm.weight", ones);
    const double s_q = since(t);
    seconds_quantize += s_q;
    lj["linears"] = lin;
    lj["seconds"] = {{"rotate", s_rot},          {"calibrate", s_cal}, {"reorder", s_reo},
                     {"smooth_attention", s_sa}, {"smooth", s_sm},     {"quantize", s_q}};
    layers.push_back(lj);
    x.swap(y);
    progress.layer_done(l + 1);
  }

  // lm_head: final norm folded, rotated, fp16.
  {
    const auto t = Clock::now();
    std::vector<float> lm = cfg.tie_word_embeddings
                                ? std::move(lm_head_tied)
                                : read_fp_tensor(ck, "lm_head.weight", {V, H}, o.model_dir);
    std::vector<float> final_norm = read_fp_tensor(ck, "model.norm.weight", {H}, o.model_dir);
    fold_final_norm(lm, H, final_norm);
    if (rot) rotate_rows(lm, *rot);
    out.write_f16("lm_head.weight", lm);
    out.write_f16("model.norm.weight", final_norm);
    seconds_rotate += since(t);
  }
  out.finish();
  copy_side_files(o.model_dir, o.out_dir, cfg.tie_word_embeddings);

  report["layers"] = layers;
  report["seconds"] = {
      {"total", since(t_start)},    {"calibration_data", report["calibration"]["seconds"]},
      {"rotate", seconds_rotate},   {"calibrate", seconds_calibrate},
      {"reorder", seconds_reorder}, {"smooth_attention", seconds_smooth_attn},
      {"smooth", seconds_smooth},   {"quantize", seconds_quantize}};
  report["peak_rss_mib"] = peak_rss_mib();
  std::ofstream(fs::path(o.out_dir) / "quantization.json") << report.dump(2) << "\n";
  return report;
}

}  // namespace qserve::qoq
