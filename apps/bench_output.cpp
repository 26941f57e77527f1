#include "bench_output.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace qserve::cli {

void write_json(const std::string& path, const nlohmann::json& doc) {
  std::ofstream out(path);
  check(static_cast<bool>(out), path + ": cannot open for writing");
  out << doc.dump(2) << "\n";
  check(static_cast<bool>(out), path + ": write failed");
}

void append_json(const std::string& path, const nlohmann::json& doc) {
  if (!std::filesystem::exists(path)) {
    write_json(path, doc);
    return;
  }
  nlohmann::json old;
  {
    std::ifstream in(path);
    check(static_cast<bool>(in), path + ": cannot open for reading");
    old = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  }
  check(old.is_object() && old.contains("results") && old["results"].is_array(),
        path + ": not a benchmark results document (a JSON object with a \"results\" array)");
  for (const nlohmann::json& row : doc.at("results")) old["results"].push_back(row);
  write_json(path, old);
}

void append_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::app);
  check(static_cast<bool>(out), path + ": cannot open for writing");
  out << text;
}

}  // namespace qserve::cli
