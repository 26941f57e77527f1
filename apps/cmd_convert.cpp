// qserve convert: an LMQuant or DeepCompressor fake-quant dump (model.pt + scale.pt) to our
// quantized checkpoint (model.safetensors with QServe's tensor names, metadata, and the HF
// folder's json/tokenizer files), optionally also QServe's model-zoo pytorch_model.bin.
// docs/checkpoints.md.
#include <cstdio>

#include "commands.h"
#include "model/qserve_convert.h"

namespace qserve::cli {

void add_convert(CLI::App& app) {
  auto o = std::make_shared<ConvertOptions>();
  auto layout = std::make_shared<std::string>("safetensors");
  CLI::App* cmd = app.add_subcommand(
      "convert", "Convert an LMQuant or DeepCompressor W4 dump to a quantized W4A8 checkpoint");
  cmd->add_option("--from", o->from,
                  "Dump format: lmquant (scale.pt keys .scale.0/.scale.1/.zero) or "
                  "deepcompressor (also .scaled_zero)")
      ->check(CLI::IsMember({"lmquant", "deepcompressor"}));
  cmd->add_option("--model", o->model_dir, "HuggingFace model folder (config, tokenizer)")
      ->required();
  cmd->add_option("--quant-path", o->quant_path, "Dump folder with model.pt and scale.pt")
      ->required();
  cmd->add_option("--group-size", o->group_size, "-1 (per-channel) or 128")
      ->check(CLI::IsMember({-1, 128}));
  cmd->add_option("--layout", *layout,
                  "safetensors: our model.safetensors; qserve: also QServe's model-zoo "
                  "pytorch_model.bin")
      ->check(CLI::IsMember({"safetensors", "qserve"}));
  cmd->add_option("--out", o->out, "Output folder")->required();
  cmd->callback([o, layout] {
    o->layout_qserve = *layout == "qserve";
    const int64_t n = convert_dump(*o);
    std::printf("wrote %s: %lld quantized linears (%s)%s\n", o->out.c_str(),
                static_cast<long long>(n), o->group_size == 128 ? "w4a8 g128" : "w4a8 per-channel",
                o->layout_qserve ? ", model.safetensors and pytorch_model.bin" : "");
  });
}

}  // namespace qserve::cli
