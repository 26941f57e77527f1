#include "engine/dataset.h"

#include <array>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "formats/json_util.h"

namespace qserve {
namespace {

using formats_detail::describe_json;
using formats_detail::json_error_text;
using formats_detail::printable;
using nlohmann::json;

constexpr std::array<const char*, 13> kSamplingFields = {
    "max_tokens", "temperature",   "top_p",          "top_k",      "min_p",
    "seed",       "stop",          "stop_token_ids", "ignore_eos", "min_tokens",
    "logprobs",   "top_logprobs",  "skip_special_tokens"};

[[noreturn]] void bad_field(const std::string& where, const std::string& field, const json& v,
                            const char* expected) {
  throw Error(where + ": field '" + field + "' is " + describe_json(v) + "; expected " +
              expected);
}

int64_t get_int(const std::string& where, const std::string& field, const json& v, int64_t lo,
                int64_t hi) {
  if (!v.is_number_integer()) bad_field(where, field, v, "an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    bad_field(where, field, v, ("an integer <= " + std::to_string(hi)).c_str());
  const int64_t x = v.is_number_unsigned() ? static_cast<int64_t>(v.get<uint64_t>())
                                           : v.get<int64_t>();
  if (x < lo || x > hi)
    bad_field(where, field, v,
              ("an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]").c_str());
  return x;
}

float get_float(const std::string& where, const std::string& field, const json& v) {
  if (!v.is_number()) bad_field(where, field, v, "a number");
  return static_cast<float>(v.get<double>());
}

bool get_bool(const std::string& where, const std::string& field, const json& v) {
  if (!v.is_boolean()) bad_field(where, field, v, "true or false");
  return v.get<bool>();
}

// Type-checks and applies fields; validate_result also checks ranges and cross-field rules
// (which depend on the defaults, so the parser leaves them to apply_sampling_fields).
SamplingParams apply_fields(SamplingParams p, const json& fields, const std::string& where,
                            bool validate_result) {
  if (!fields.is_object())
    throw Error(where + ": sampling fields are " + describe_json(fields) + "; expected an object");
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
  for (const auto& [key, v] : fields.items()) {
    if (v.is_null()) continue;  // JSON clients send null for "not set"
    if (key == "temperature") p.temperature = get_float(where, key, v);
    else if (key == "top_p") p.top_p = get_float(where, key, v);
    else if (key == "min_p") p.min_p = get_float(where, key, v);
    else if (key == "top_k") p.top_k = static_cast<int>(get_int(where, key, v, -1, kIntMax));
    else if (key == "max_tokens") p.max_tokens = get_int(where, key, v, 1, kI64Max);
    else if (key == "min_tokens") p.min_tokens = get_int(where, key, v, 0, kI64Max);
    else if (key == "top_logprobs")
      p.top_logprobs = static_cast<int>(get_int(where, key, v, 0, kMaxTopLogprobs));
    else if (key == "ignore_eos") p.ignore_eos = get_bool(where, key, v);
    else if (key == "logprobs") p.logprobs = get_bool(where, key, v);
    else if (key == "skip_special_tokens") p.skip_special_tokens = get_bool(where, key, v);
    else if (key == "seed") {
      if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
        bad_field(where, key, v, "an integer >= 0");
      p.seed = v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
    } else if (key == "stop") {
      p.stop.clear();
      if (v.is_string()) {
        p.stop.push_back(v.get<std::string>());
      } else if (v.is_array()) {
        for (size_t i = 0; i < v.size(); ++i) {
          if (!v[i].is_string())
            bad_field(where, "stop[" + std::to_string(i) + "]", v[i], "a string");
          p.stop.push_back(v[i].get<std::string>());
        }
      } else {
        bad_field(where, key, v, "a string or a list of strings");
      }
      for (size_t i = 0; i < p.stop.size(); ++i) {
        if (p.stop[i].empty())
          bad_field(where, v.is_array() ? "stop[" + std::to_string(i) + "]" : key,
                    v.is_array() ? v[i] : v, "a non-empty string");
      }
    } else if (key == "stop_token_ids") {
      if (!v.is_array()) bad_field(where, key, v, "a list of token ids");
      p.stop_token_ids.clear();
      for (size_t i = 0; i < v.size(); ++i) {
        p.stop_token_ids.push_back(static_cast<int32_t>(get_int(
            where, "stop_token_ids[" + std::to_string(i) + "]", v[i], 0,
            std::numeric_limits<int32_t>::max())));
      }
    } else {
      throw Error(where + ": unknown sampling field '" + printable(key, 40) + "'");
    }
  }
  if (validate_result) {
    try {
      validate(p);
    } catch (const Error& e) {
      throw Error(where + ": " + e.what());
    }
  }
  return p;
}

std::vector<ChatMessage> parse_messages(const json& v, const std::string& where,
                                        const std::string& field) {
  if (!v.is_array()) bad_field(where, field, v, "a list of {\"role\", \"content\"} objects");
  if (v.empty()) throw Error(where + ": field '" + field + "' is an empty list");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string f = field + "[" + std::to_string(i) + "]";
    const json& m = v[i];
    if (!m.is_object()) bad_field(where, f, m, "an object with role and content");
    const auto role = m.find("role");
    if (role == m.end()) throw Error(where + ": field '" + f + "' has no \"role\"");
    if (!role->is_string()) bad_field(where, f + ".role", *role, "a string");
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant") {
      throw Error(where + ": field '" + f + ".role' is '" + printable(r, 40) +
                  "'; expected system, user or assistant");
    }
    const auto content = m.find("content");
    if (content == m.end()) throw Error(where + ": field '" + f + "' has no \"content\"");
    if (!content->is_string()) bad_field(where, f + ".content", *content, "a string");
    out.push_back({r, content->get<std::string>()});
  }
  return out;
}

DatasetRow parse_row(const json& j, int64_t line, const std::string& where) {
  if (!j.is_object()) throw Error(where + ": the row is " + describe_json(j) + "; expected an object");
  DatasetRow row;
  row.line = line;
  row.id = std::to_string(line);
  if (const auto id = j.find("id"); id != j.end() && !id->is_null()) {
    if (id->is_string()) row.id = id->get<std::string>();
    else if (id->is_number_integer()) row.id = id->dump();
    else bad_field(where, "id", *id, "a string or an integer");
  }
  const auto prompt = j.find("prompt");
  const bool has_prompt = prompt != j.end() && !prompt->is_null();
  const char* chat_key = nullptr;
  for (const char* k : {"conversation", "messages"}) {
    const auto it = j.find(k);
    if (it == j.end() || it->is_null()) continue;
    if (chat_key != nullptr)
      throw Error(where + ": the row has both \"conversation\" and \"messages\"; give one");
    chat_key = k;
  }
  if (has_prompt && chat_key != nullptr)
    throw Error(where + ": the row has both \"prompt\" and \"" + chat_key + "\"; give one");
  if (!has_prompt && chat_key == nullptr)
    throw Error(where + ": the row has neither \"prompt\" nor \"conversation\"/\"messages\"");
  if (has_prompt) {
    if (!prompt->is_string()) bad_field(where, "prompt", *prompt, "a string");
    row.prompt = prompt->get<std::string>();
  } else {
    row.conversation = parse_messages(j.at(chat_key), where, chat_key);
    // WildChat rows end with the model's answer: keep it as the reference, generate it anew.
    if (row.conversation.back().role == "assistant") {
      row.reference = std::move(row.conversation.back().content);
      row.conversation.pop_back();
    }
    if (row.conversation.empty() || row.conversation.back().role != "user") {
      throw Error(where + ": field '" + chat_key +
                  "' must end with a user turn (after dropping one trailing assistant turn)");
    }
  }
  for (const char* k : kSamplingFields) {
    const auto it = j.find(k);
    if (it != j.end() && !it->is_null()) row.sampling[k] = *it;
  }
  (void)apply_fields(SamplingParams{}, row.sampling, where, /*validate_result=*/false);
  return row;
}

}  // namespace

std::vector<DatasetRow> parse_prompt_dataset(std::string_view text, const std::string& name) {
  std::vector<DatasetRow> rows;
  int64_t line = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view l = text.substr(pos, end - pos);
    pos = end + 1;
    ++line;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
    const std::string where = name + ":" + std::to_string(line);
    // The parser would stop silently at a NUL byte; JSON never contains one.
    if (l.find('\0') != std::string_view::npos)
      throw Error(where + ": not valid JSON (contains a NUL byte)");
    json j;
    try {
      j = json::parse(l);
    } catch (const json::exception& e) {
      throw Error(where + ": not valid JSON: " + json_error_text(e));
    }
    rows.push_back(parse_row(j, line, where));
  }
  if (rows.empty()) throw Error(name + ": no rows (the dataset is empty)");
  return rows;
}

std::vector<DatasetRow> read_prompt_dataset(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(path + ": not found or not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return parse_prompt_dataset(ss.str(), path);
}

SamplingParams apply_sampling_fields(const SamplingParams& defaults, const json& fields,
                                     const std::string& where) {
  return apply_fields(defaults, fields, where, /*validate_result=*/true);
}

}  // namespace qserve
