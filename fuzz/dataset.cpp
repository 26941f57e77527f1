// libFuzzer target: a prompt dataset (JSONL) from arbitrary bytes either parses or throws
// qserve::Error; every row that parses must also apply its sampling fields and render with every
// built-in chat template without crashing (they may still reject it with qserve::Error).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "engine/chat_template.h"
#include "engine/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const std::vector<qserve::DatasetRow> rows = qserve::parse_prompt_dataset(text, "fuzz.jsonl");
    for (const qserve::DatasetRow& row : rows) {
      // The parser's contract: exactly one of prompt/conversation, a conversation ending in user.
      if (row.prompt.has_value() == !row.conversation.empty()) std::abort();
      if (!row.conversation.empty() && row.conversation.back().role != "user") std::abort();
      try {
        (void)qserve::apply_sampling_fields({}, row.sampling, "fuzz.jsonl");
      } catch (const qserve::Error&) {
        // Range errors are reported at apply time.
      }
      for (const qserve::ChatTemplate t : qserve::all_chat_templates()) {
        try {
          (void)qserve::render_chat(t, row.conversation, true, "<s>", "</s>");
        } catch (const qserve::Error&) {
          // Role order a template does not allow.
        }
      }
    }
  } catch (const qserve::Error&) {
    // Malformed input is reported, not crashed on.
  }
  return 0;
}
