// qserve inspect: the parsed config, every tensor with dtype and shape, and the parameter count.
#include <cstdio>

#include "commands.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"

namespace qserve::cli {

void add_inspect(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect", "Print a model's config, tensors and size");
  cmd->add_option("--model", *model, "HuggingFace model folder")->required();
  cmd->callback([model] {
    const ModelConfig cfg = load_hf_config(*model);
    std::printf("%s\n", describe(cfg).c_str());
    const SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open_dir(*model);
    int64_t params = 0;
    size_t bytes = 0;
    std::printf("tensors (%zu):\n", ckpt.names().size());
    for (const std::string& name : ckpt.names()) {
      const SafetensorsEntry& e = ckpt.entry(name);
      int64_t n = 1;
      for (int64_t d : e.shape) n *= d;
      params += n;
      bytes += e.end - e.begin;
      std::printf("  %-60s %-5s %s\n", name.c_str(), std::string(dtype_name(e.dtype)).c_str(),
                  shape_to_string(e.shape).c_str());
    }
    std::printf("parameters: %lld (%.2f M), %.2f MB of tensor data\n",
                static_cast<long long>(params), static_cast<double>(params) / 1e6,
                static_cast<double>(bytes) / 1e6);
  });
}

}  // namespace qserve::cli
