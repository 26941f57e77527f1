#include "engine/stop_checker.h"

#include <gtest/gtest.h>

#include <random>

namespace qserve {
namespace {

struct Streamed {
  std::string text;
  bool stopped = false;
  std::string matched;
};

Streamed stream(const std::vector<std::string>& stops, const std::vector<std::string>& pieces,
                size_t unchecked_pieces = 0) {
  StopChecker c(stops);
  Streamed out;
  for (size_t i = 0; i < pieces.size(); ++i) {
    StopChecker::Result r = c.push(pieces[i], i >= unchecked_pieces);
    out.text += r.emit;
    if (r.stopped) {
      out.stopped = true;
      out.matched = r.matched;
      return out;
    }
  }
  out.text += c.flush();
  return out;
}

// The non-streamed reference: among occurrences of any stop string that end after `checked_from`
// (text before it was produced before min_tokens), the one that ends first (the longest on ties)
// cuts the text at its start.
Streamed reference(const std::string& text, const std::vector<std::string>& stops,
                   size_t checked_from = 0) {
  size_t best_pos = std::string::npos, best_end = std::string::npos;
  std::string matched;
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    for (size_t pos = text.find(s); pos != std::string::npos; pos = text.find(s, pos + 1)) {
      const size_t end = pos + s.size();
      if (end <= checked_from) continue;
      if (end < best_end || (end == best_end && pos < best_pos)) {
        best_pos = pos;
        best_end = end;
        matched = s;
      }
      break;  // later occurrences of s end later
    }
  }
  if (best_pos == std::string::npos) return {text, false, ""};
  return {text.substr(0, best_pos), true, matched};
}

TEST(StopChecker, NoStopsPassesThrough) {
  StopChecker c({});
  EXPECT_EQ(c.push("hello").emit, "hello");
  EXPECT_EQ(c.flush(), "");
}

TEST(StopChecker, CutsBeforeStopAcrossPieces) {
  StopChecker c({"###"});
  StopChecker::Result r = c.push("Answer: 42 #");
  EXPECT_EQ(r.emit, "Answer: 42 ");
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(c.held(), 1u);
  r = c.push("#");
  EXPECT_EQ(r.emit, "");
  r = c.push("# more");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(r.matched, "###");
  EXPECT_TRUE(c.push("x").stopped);
}

TEST(StopChecker, ReleasesHeldTextWhenItDiverges) {
  StopChecker c({"\nUser:"});
  EXPECT_EQ(c.push("line one\nUs").emit, "line one");
  EXPECT_EQ(c.push("ually").emit, "\nUsually");
  EXPECT_EQ(c.push("\n").emit, "");
  EXPECT_EQ(c.flush(), "\n");
}

TEST(StopChecker, StopInsideOnePiece) {
  StopChecker c({"END", "STOP"});
  const StopChecker::Result r = c.push("abc STOP def END");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "abc ");
  EXPECT_EQ(r.matched, "STOP");
}

TEST(StopChecker, FirstCompletedStopWins) {
  // "c" completes before "abcd" could; a streamed checker cannot wait to see "abcd".
  EXPECT_EQ(stream({"abcd", "c"}, {"ab", "cd"}).text, "ab");
  EXPECT_EQ(stream({"abcd", "c"}, {"abcd"}).text, "ab");
  // Equal ends: the longer one (it starts earlier) wins.
  const Streamed s = stream({"b", "ab"}, {"xa", "b"});
  EXPECT_EQ(s.text, "x");
  EXPECT_EQ(s.matched, "ab");
}

TEST(StopChecker, UncheckedTextNeverStopsButIsHeld) {
  StopChecker c({"ab"});
  StopChecker::Result r = c.push("xab a", /*check=*/false);
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.emit, "xab ");  // "a" may begin "ab": held even before min_tokens
  r = c.push("b", /*check=*/true);
  EXPECT_TRUE(r.stopped);  // the occurrence ends in checked text
  EXPECT_EQ(r.emit, "");
  EXPECT_EQ(r.matched, "ab");
}

TEST(StopChecker, MultiByteText) {
  // Stop strings and text in UTF-8: the hold-back and the cut stay on character boundaries.
  const std::string stop = "\xE3\x80\x82\xE3\x80\x82";  // "。。"
  StopChecker c({stop});
  EXPECT_EQ(c.push("\xE6\x97\xA5\xE3\x80\x82").emit, "\xE6\x97\xA5");
  const StopChecker::Result r = c.push("\xE3\x80\x82\xE6\x9C\xAC");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, "");
}

// Property: for random texts split at random points and random stop sets, the streamed output
// equals the reference, never contains a checked stop string, and is a prefix of the text.
TEST(StopChecker, StreamedEqualsReferenceProperty) {
  std::mt19937_64 rng(20240601);
  auto rand_string = [&](size_t max_len, const std::string& alphabet) {
    const size_t len = rng() % (max_len + 1);
    std::string s;
    for (size_t i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    return s;
  };
  int stopped = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    // Small alphabets make overlaps, repeats and near-misses common.
    const std::string alphabet = trial % 3 == 0 ? "ab" : (trial % 3 == 1 ? "abc" : "ab\nc ");
    const std::string text = rand_string(40, alphabet);
    std::vector<std::string> stops;
    const size_t n_stops = rng() % 4;
    for (size_t i = 0; i < n_stops; ++i) {
      // Lengths 1..5 (GCC 12 -O3 warns falsely on assigning a literal to a maybe-empty string).
      std::string s(1, alphabet[rng() % alphabet.size()]);
      s += rand_string(4, alphabet);
      stops.push_back(s);
    }
    std::vector<std::string> pieces;
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = std::min<size_t>(rng() % 6, text.size() - pos);  // empty pieces too
      pieces.push_back(text.substr(pos, len));
      pos += len;
    }
    const size_t unchecked = trial % 2 == 0 ? 0 : rng() % (pieces.size() + 1);
    size_t checked_from = 0;
    for (size_t i = 0; i < unchecked; ++i) checked_from += pieces[i].size();

    const Streamed got = stream(stops, pieces, unchecked);
    const Streamed want = reference(text, stops, checked_from);
    ASSERT_EQ(got.text, want.text) << "trial " << trial << " text '" << text << "'";
    ASSERT_EQ(got.stopped, want.stopped) << "trial " << trial;
    ASSERT_EQ(got.matched, want.matched) << "trial " << trial;
    stopped += got.stopped;
    ASSERT_EQ(text.compare(0, got.text.size(), got.text), 0);
    if (unchecked == 0) {
      for (const std::string& s : stops)
        ASSERT_EQ(got.text.find(s), std::string::npos) << "trial " << trial << " stop '" << s << "'";
    }
  }
  // The trials must exercise both outcomes.
  EXPECT_GT(stopped, 5000);
  EXPECT_LT(stopped, 15000);
}

// Hold-back is minimal: after each push, what is held is exactly the longest suffix of the text
// so far that is a proper prefix of a stop string.
TEST(StopChecker, HoldsBackOnlyAPossibleStopPrefix) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 3000; ++trial) {
    const std::vector<std::string> stops = {"aab", "ba"};
    StopChecker c(stops);
    std::string so_far;
    for (int step = 0; step < 10; ++step) {
      std::string piece(1 + rng() % 3, 'a');
      for (char& ch : piece) ch = "abx"[rng() % 3];
      const StopChecker::Result r = c.push(piece);
      so_far += piece;
      if (r.stopped) break;
      size_t want = 0;
      for (const std::string& s : stops) {
        for (size_t k = std::min(s.size() - 1, so_far.size()); k > 0; --k) {
          if (so_far.compare(so_far.size() - k, k, s, 0, k) == 0) {
            want = std::max(want, k);
            break;
          }
        }
      }
      ASSERT_EQ(c.held(), want) << so_far;
    }
  }
}

}  // namespace
}  // namespace qserve
