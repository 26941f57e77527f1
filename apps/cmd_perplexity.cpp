// qserve perplexity: the windowed perplexity protocol over a text file.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "eval/perplexity.h"

namespace qserve::cli {

void add_perplexity(CLI::App& app) {
  struct Args {
    std::string model, text, separator, eot;
    int64_t window = 512;
    int64_t max_windows = 0;
    int64_t prefill_chunk = 0;
    bool json = false;
    bool raw_newlines = false;
    PrecisionArgs precision;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity over non-overlapping windows");
  cmd->add_option("--model", args->model, "HuggingFace model folder")->required();
  cmd->add_option("--text", args->text, "Text file")->required();
  cmd->add_option("--window", args->window, "Window length in tokens")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--doc-separator", args->separator,
                  "Split the text into documents at this string (escapes like \\n allowed); "
                  "each becomes BOS + ids + end-of-text");
  cmd->add_option("--eot-token", args->eot, "End-of-text token for --doc-separator");
  cmd->add_option("--max-windows", args->max_windows, "Evaluate at most K windows (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--prefill-chunk", args->prefill_chunk,
                  "Prefill each window in chunks of N tokens, so later chunks read the (quantized) "
                  "KV cache of earlier ones (0 = one prefill per window)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", args->json, "Print the result as JSON");
  cmd->add_flag("--raw-newlines", args->raw_newlines,
                "Keep CR/CRLF line ends (default: read as Python's text mode, CRLF -> LF)");
  add_precision_options(cmd, args->precision, /*norm_flag=*/true);
  cmd->callback([args] {
    const LoadOptions opts = args->precision.options();
    const std::string text = read_text_file(args->text, !args->raw_newlines);
    LoadedModel m = load_model(args->model, /*need_tokenizer=*/true, opts);
    const std::vector<int32_t> stream =
        perplexity_stream(*m.tokenizer, text, unescape(args->separator), args->eot);
    const bool tty = !args->json;
    PerplexityResult r = perplexity(
        *m.model, stream, args->window, args->max_windows,
        [tty](int64_t done, int64_t total) {
          if (tty && (done % 10 == 0 || done == total)) {
            std::fprintf(stderr, "\rwindow %lld/%lld", static_cast<long long>(done),
                         static_cast<long long>(total));
          }
        },
        args->prefill_chunk);
    if (tty) std::fprintf(stderr, "\n");
    if (args->json) {
      nlohmann::json j = {{"ppl", r.ppl},
                          {"mean_nll", r.mean_nll},
                          {"windows", r.windows},
                          {"tokens", r.tokens},
                          {"window", args->window},
                          {"seconds", r.seconds},
                          {"precision", m.model->precision().name()},
                          {"qserve_norm", opts.qserve_norm},
                          {"prefill_chunk", args->prefill_chunk}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf(
          "perplexity %.4f over %lld windows of %lld tokens (%lld tokens in the stream), "
          "%.1f s, %s%s\n",
          r.ppl, static_cast<long long>(r.windows), static_cast<long long>(args->window),
          static_cast<long long>(r.tokens), r.seconds, m.model->precision().name().c_str(),
          opts.qserve_norm ? " (qserve norm)" : "");
    }
  });
}

}  // namespace qserve::cli
