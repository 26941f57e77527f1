#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <utility>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread matching state: match data and a JIT stack larger than the 32 KiB default, so that
// long runs of whitespace or letters do not hit the JIT stack limit. Shared by every pattern
// (match data needs only the whole-match pair, which PCRE2 fills even when more groups exist).
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context != nullptr && jit_stack != nullptr) {
      pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  if (s.data == nullptr) throw Error("regex: out of memory for PCRE2 match data");
  return s;
}

}  // namespace

Regex::Regex(std::string_view pattern, bool literal) : pattern_(pattern) {
  if (!utf8::is_valid(pattern)) throw Error("regex pattern is not valid UTF-8");
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // PCRE2 refuses UCP together with LITERAL (it has no meaning there).
  const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                        &error_code, &error_offset, nullptr);
  if (code_ == nullptr) {
    throw Error("invalid regex '" + pattern_ + "': " + pcre2_message(error_code) + " at offset " +
                std::to_string(error_offset));
  }
  // JIT is an optimisation only: when it is unavailable the interpreter is used.
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
}

Regex::~Regex() {
  pcre2_code_free(code_);
}

Regex::Regex(Regex&& other) noexcept
    : pattern_(std::move(other.pattern_)), code_(std::exchange(other.code_, nullptr)) {}

Regex& Regex::operator=(Regex&& other) noexcept {
  if (this != &other) {
    pcre2_code_free(code_);
    pattern_ = std::move(other.pattern_);
    code_ = std::exchange(other.code_, nullptr);
  }
  return *this;
}

bool Regex::next_match(std::string_view text, size_t pos, bool anchored, size_t& start,
                       size_t& end) const {
  MatchScratch& s = scratch();
  // Inputs are validated UTF-8 (encode sanitizes text first), so PCRE2's own check is skipped.
  uint32_t options = PCRE2_NO_UTF_CHECK;
  if (anchored) options |= PCRE2_ANCHORED;
  const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                             options, s.data, s.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) throw Error("regex '" + pattern_ + "' failed to match: " + pcre2_message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
  start = ov[0];
  end = ov[1] < ov[0] ? ov[0] : ov[1];  // \K tricks can report end < start
  return true;
}

void Regex::find_matches(std::string_view text, std::vector<RegexSegment>& out) const {
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t prev = 0;
  size_t pos = 0;
  size_t start = 0;
  size_t end = 0;
  while (pos <= text.size() && next_match(text, pos, false, start, end)) {
    if (prev != start) out.push_back({prev, start, false});
    out.push_back({start, end, true});
    prev = end;
    if (end == start) {  // an empty match: step over one character to make progress
      if (end >= text.size()) break;
      pos = end + utf8::char_length(text, end);
    } else {
      pos = end;
    }
  }
  if (prev != text.size()) out.push_back({prev, text.size(), false});
}

bool Regex::matches_at(std::string_view text, size_t pos) const {
  size_t start = 0;
  size_t end = 0;
  return next_match(text, pos, true, start, end);
}

}  // namespace qserve
