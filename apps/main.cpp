// qserve: the command-line front end. Each subcommand lives in its own cmd_*.cpp; errors from any
// of them surface here as one line on stderr and exit code 1.
#include <cstdio>
#include <exception>

#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"

int main(int argc, char** argv) {
  CLI::App app{"qserve: W4A8KV4 LLM inference and serving engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "qserve.cpp 0.1.0");
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads (default: QSERVE_THREADS or all cores)")
      ->check(CLI::NonNegativeNumber);
  app.parse_complete_callback([&] {
    if (threads > 0) qserve::ThreadPool::set_global_threads(threads);
  });
  qserve::cli::add_generate(app);
  qserve::cli::add_tokenize(app);
  qserve::cli::add_perplexity(app);
  qserve::cli::add_inspect(app);
  qserve::cli::add_bench(app);
  qserve::cli::add_convert(app);
  qserve::cli::add_quantize(app);
  qserve::cli::add_serve(app);
  qserve::cli::add_bench_serve(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qserve::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
