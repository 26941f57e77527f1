#include "tokenizer/post_processor.h"

#include "core/error.h"

namespace qserve {

namespace {

class WrapProcessor final : public PostProcessor {
 public:
  WrapProcessor(std::vector<int32_t> prefix, std::vector<int32_t> suffix)
      : prefix_(std::move(prefix)), suffix_(std::move(suffix)) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), prefix_.begin(), prefix_.end());
    ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  }

 private:
  std::vector<int32_t> prefix_;
  std::vector<int32_t> suffix_;
};

class NoOpProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& s : steps_) s->process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// TemplateProcessing's "single" template: special tokens around the one sequence $A.
std::unique_ptr<PostProcessor> make_template(const json::Json& j, const std::string& where) {
  const json::Json& single = json::require(j, "single", where);
  if (!single.is_array()) throw Error(where + ".single: expected an array");
  const json::Json* specials = json::member(j, "special_tokens");
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
  bool seen_sequence = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string at = where + ".single[" + std::to_string(i) + "]";
    const json::Json& item = single[i];
    if (const json::Json* seq = json::member(item, "Sequence")) {
      const std::string id = json::as_string(json::require(*seq, "id", at), at + ".Sequence.id");
      if (id != "A") throw Error(at + ": the single template can only hold sequence A");
      if (seen_sequence) throw Error(at + ": sequence A appears twice");
      seen_sequence = true;
    } else if (const json::Json* sp = json::member(item, "SpecialToken")) {
      const std::string name =
          json::as_string(json::require(*sp, "id", at), at + ".SpecialToken.id");
      const json::Json* entry = specials == nullptr ? nullptr : json::member(*specials, name);
      if (entry == nullptr) {
        throw Error(at + ": special token '" + name + "' is not in special_tokens");
      }
      const std::string entry_at = where + ".special_tokens[\"" + name + "\"]";
      const json::Json& ids = json::require(*entry, "ids", entry_at);
      if (!ids.is_array()) throw Error(entry_at + ".ids: expected an array");
      for (const auto& id : ids) {
        (seen_sequence ? suffix : prefix).push_back(json::as_id(id, entry_at + ".ids"));
      }
    } else {
      throw Error(at + ": expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  if (!seen_sequence) throw Error(where + ".single: the template has no $A");
  return make_wrap_processor(std::move(prefix), std::move(suffix));
}

// BertProcessing / RobertaProcessing: {"cls": [token, id], "sep": [token, id]}.
int32_t pair_id(const json::Json& j, const char* key, const std::string& where) {
  const json::Json& v = json::require(j, key, where);
  const std::string at = where + "." + key;
  if (!v.is_array() || v.size() != 2) throw Error(at + ": expected [token, id]");
  return json::as_id(v[1], at + "[1]");
}

}  // namespace

std::unique_ptr<PostProcessor> make_wrap_processor(std::vector<int32_t> prefix,
                                                   std::vector<int32_t> suffix) {
  return std::make_unique<WrapProcessor>(std::move(prefix), std::move(suffix));
}

std::unique_ptr<PostProcessor> make_post_processor(const json::Json& j, const std::string& where,
                                                   int depth) {
  json::check_depth(depth, where);
  const std::string type = json::type_of(j, where);
  if (type == "TemplateProcessing") return make_template(j, where);
  if (type == "ByteLevel") return std::make_unique<NoOpProcessor>();
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    return make_wrap_processor({pair_id(j, "cls", where)}, {pair_id(j, "sep", where)});
  }
  if (type == "Sequence") {
    const json::Json& list = json::require(j, "processors", where);
    if (!list.is_array()) throw Error(where + ".processors: expected an array");
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      steps.push_back(make_post_processor(list[i], where + ".processors[" + std::to_string(i) + "]",
                                          depth + 1));
    }
    return std::make_unique<SequenceProcessor>(std::move(steps));
  }
  throw Error(where + ": post_processor type '" + type +
              "' is not supported (supported: TemplateProcessing, ByteLevel, BertProcessing, "
              "RobertaProcessing, Sequence)");
}

}  // namespace qserve
