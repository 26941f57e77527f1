// Where `qserve bench` writes its results: one JSON document (bench/results format: device,
// commit, date, command, results = flat rows), either written afresh or appended to (so a script
// can gather several runs in one file), and Markdown table rows.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace qserve::cli {

// Writes `doc` to `path` (pretty-printed). Throws qserve::Error when it cannot.
void write_json(const std::string& path, const nlohmann::json& doc);
// Appends doc["results"] to the "results" of the document in `path` and keeps that document's
// other fields; a missing file is written as `doc`. Throws on a file that is not such a document.
void append_json(const std::string& path, const nlohmann::json& doc);
// Appends `text` to `path` (created when missing).
void append_text(const std::string& path, const std::string& text);

}  // namespace qserve::cli
