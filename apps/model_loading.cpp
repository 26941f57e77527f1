#include <unistd.h>

#include <filesystem>

#include "commands.h"
#include "core/error.h"
#include "engine_options.h"
#include "model/synthetic_configs.h"

namespace qserve::cli {

namespace {

// Parameters of a config (embedding, layers, final norm, untied lm_head).
int64_t estimate_params(const ModelConfig& c) {
  const int64_t H = c.hidden_size;
  const int64_t per_layer =
      2 * H + H * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * H + 3 * H * c.intermediate_size;
  return c.vocab_size * H * (c.tie_word_embeddings ? 1 : 2) + c.num_layers * per_layer + H;
}

}  // namespace

LoadedModel load_model(const std::string& spec, bool need_tokenizer, const LoadOptions& opts,
                       const std::string& tokenizer_dir) {
  LoadedModel m;
  const std::string prefix = "synthetic:";
  if (!tokenizer_dir.empty()) {
    check(std::filesystem::is_directory(tokenizer_dir),
          "--tokenizer " + tokenizer_dir + ": not a folder");
    m.tokenizer = load_tokenizer(tokenizer_dir);
  }
  if (spec.rfind(prefix, 0) == 0) {
    check(!need_tokenizer || m.tokenizer,
          "a synthetic model has no tokenizer; give a model folder, or --tokenizer DIR to pair "
          "the synthetic weights with a tokenizer");
    ModelConfig cfg = synthetic_config(spec.substr(prefix.size()));
    if (m.tokenizer) cfg.vocab_size = m.tokenizer->vocab_size();
    // The CPU backend holds weights in fp32: refuse shapes that cannot fit in RAM.
    const double need = static_cast<double>(estimate_params(cfg)) * 4.0;
    const double have =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    if (need > 0.8 * have) {
      throw Error(spec + " needs " + std::to_string(static_cast<int64_t>(need / 1e9)) +
                  " GB of fp32 weights on the CPU backend; this machine has " +
                  std::to_string(static_cast<int64_t>(have / 1e9)) + " GB");
    }
    m.model = LlamaModel::synthetic(cfg, /*seed=*/1234, opts);
    return m;
  }
  check(
      std::filesystem::is_directory(spec),
      "--model " + spec + ": not a folder (expected a HuggingFace model folder or synthetic:NAME)");
  m.model = LlamaModel::load(spec, opts);
  if (need_tokenizer && !m.tokenizer) m.tokenizer = load_tokenizer(spec);
  return m;
}

LoadOptions PrecisionArgs::options() const {
  LoadOptions o;
  o.precision = Precision::parse(precision);
  o.qserve_norm = qserve_norm;
  o.qserve_numerics = qserve_numerics;
  return o;
}

void add_precision_options(CLI::App* cmd, PrecisionArgs& args, bool norm_flag) {
  std::string spellings;
  for (const std::string& s : precision_spellings()) {
    spellings += (spellings.empty() ? "" : ", ") + s;
  }
  cmd->add_option("--precision", args.precision,
                  "Weights/activations and KV cache precision (default w16a16kv16, the fp32 "
                  "reference; quantized ones are RTN-quantized at load): " +
                      spellings);
  if (norm_flag) {
    cmd->add_flag("--qserve-norm", args.qserve_norm,
                  "Norms before quantized linears subtract the mean, as QServe's kernel does "
                  "(default: true RMSNorm)");
    add_qserve_numerics_option(cmd, args.qserve_numerics);
  }
}

std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      switch (c) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        default:
          out += '\\';
          out += c;
          break;
      }
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace qserve::cli
