#include "engine/stop_checker.h"

#include <algorithm>

namespace qserve {

StopChecker::StopChecker(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

StopChecker::Result StopChecker::push(std::string_view text, bool check) {
  Result r;
  if (stopped_) {
    r.stopped = true;
    r.matched = matched_;
    return r;
  }
  if (stops_.empty()) {
    r.emit.assign(text);
    return r;
  }
  const size_t old = buf_.size();
  buf_.append(text);
  if (check && !text.empty()) {
    // Only occurrences that end in the new text are candidates: anything ending earlier was either
    // checked by an earlier push (and did not exist) or was pushed unchecked (before min_tokens).
    size_t best_pos = std::string::npos, best_end = std::string::npos;
    const std::string* best = nullptr;
    for (const std::string& s : stops_) {
      if (s.size() > buf_.size()) continue;
      const size_t from = old >= s.size() ? old - s.size() + 1 : 0;
      const size_t pos = buf_.find(s, from);
      if (pos == std::string::npos) continue;
      const size_t end = pos + s.size();
      if (best == nullptr || end < best_end || (end == best_end && pos < best_pos)) {
        best = &s;
        best_pos = pos;
        best_end = end;
      }
    }
    if (best != nullptr) {
      r.emit = buf_.substr(0, best_pos);
      r.stopped = true;
      r.matched = *best;
      stopped_ = true;
      matched_ = *best;
      buf_.clear();
      return r;
    }
  }
  // Hold back the longest suffix that is a proper prefix of some stop string; it starts at a
  // UTF-8 character boundary because a stop string starts at one.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    const size_t max_k = std::min(s.size() - 1, buf_.size());
    for (size_t k = max_k; k > hold; --k) {
      if (buf_.compare(buf_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  r.emit = buf_.substr(0, buf_.size() - hold);
  buf_.erase(0, buf_.size() - hold);
  return r;
}

std::string StopChecker::flush() {
  std::string out;
  out.swap(buf_);
  return out;
}

}  // namespace qserve
