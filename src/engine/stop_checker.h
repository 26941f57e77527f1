// Streaming stop strings. Detokenized text arrives in pieces; a stop string may straddle pieces,
// so text that could still be the beginning of a stop string is held back until the next piece
// decides it. The concatenation of everything emitted never contains a stop string that was
// checked, and the stop string itself is not emitted (vLLM's default,
// include_stop_str_in_output = false).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace qserve {

class StopChecker {
 public:
  // Empty strings in stops are ignored (SamplingParams validation rejects them anyway).
  explicit StopChecker(std::vector<std::string> stops);

  struct Result {
    std::string emit;      // text that is now final
    bool stopped = false;  // a stop string completed: emit is the text before it; finish now
    std::string matched;   // the stop string that completed
  };

  // Feeds newly detokenized text. check = false (before min_tokens) never stops but still holds
  // back. A stop string counts when it ends inside text pushed with check = true (it may begin
  // in earlier, held-back text); when several complete in one push, the one that ends first wins
  // (on equal ends, the longest; then the first listed), and the cut is at its start. After a
  // stop, further pushes return nothing and stopped = true.
  Result push(std::string_view text, bool check = true);

  // At a finish that is not a stop string (EOS, length): releases the held-back text.
  std::string flush();

  bool stopped() const { return stopped_; }
  bool empty() const { return stops_.empty(); }
  // Bytes currently held back (for tests and stats).
  size_t held() const { return buf_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string buf_;  // held back: the longest suffix that is a proper prefix of some stop
  bool stopped_ = false;
  std::string matched_;
};

}  // namespace qserve
