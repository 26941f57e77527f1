// Precision spellings: every QServe-style name parses to its weight and KV precision, names round
// trip, and anything else is one error that lists the valid spellings.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/llama_model.h"

namespace qserve {
namespace {

using W = WeightPrecision;
using K = KvPrecision;

TEST(Precision, ParsesEverySpelling) {
  struct Case {
    const char* text;
    W w;
    K kv;
    const char* canonical;
  };
  const Case cases[] = {
      {"w4a8kv4", W::kW4A8PerChannel, K::kKv4, "w4a8kv4"},
      {"w4a8kv8", W::kW4A8PerChannel, K::kKv8, "w4a8kv8"},
      {"w4a8kv4-g128", W::kW4A8G128, K::kKv4, "w4a8kv4-g128"},
      {"w4a8g128kv4", W::kW4A8G128, K::kKv4, "w4a8kv4-g128"},
      {"w4a8kv8-g128", W::kW4A8G128, K::kKv8, "w4a8kv8-g128"},
      {"w4a8g128kv8", W::kW4A8G128, K::kKv8, "w4a8kv8-g128"},
      {"w8a8kv8", W::kW8A8, K::kKv8, "w8a8kv8"},
      {"w8a8kv4", W::kW8A8, K::kKv4, "w8a8kv4"},
      {"w16a16kv16", W::kW16A16, K::kKv16, "w16a16kv16"},
      {"w16a16kv8", W::kW16A16, K::kKv8, "w16a16kv8"},
      {"w16a16kv4", W::kW16A16, K::kKv4, "w16a16kv4"},
  };
  for (const Case& c : cases) {
    const Precision p = Precision::parse(c.text);
    EXPECT_EQ(p.weights, c.w) << c.text;
    EXPECT_EQ(p.kv, c.kv) << c.text;
    EXPECT_EQ(p.name(), c.canonical) << c.text;
    EXPECT_EQ(Precision::parse(p.name()), p) << c.text;
  }
  EXPECT_EQ(precision_spellings().size(), std::size(cases));
}

TEST(Precision, DefaultIsTheFp32Reference) {
  EXPECT_EQ(Precision{}.name(), "w16a16kv16");
  EXPECT_FALSE(Precision{}.quantized_activations());
  EXPECT_FALSE(Precision{}.quantized_kv());
  EXPECT_EQ(LoadOptions{}.precision, Precision::parse("w16a16kv16"));
  EXPECT_FALSE(LoadOptions{}.qserve_norm);
}

TEST(Precision, CombinationsWithoutASpellingStillHaveANameForMessages) {
  EXPECT_EQ((Precision{W::kW4A8G128, K::kKv16}).name(), "w4a8kv16-g128");
  EXPECT_EQ((Precision{W::kW8A8, K::kKv16}).name(), "w8a8kv16");
}

TEST(Precision, InvalidSpellingsListTheValidOnes) {
  for (const char* bad : {"", "w4a8", "W4A8KV4", "w4a8kv16", "w4a8kv4-g64", "fp16", "w4a8kv4 "}) {
    try {
      Precision::parse(bad);
      ADD_FAILURE() << "'" << bad << "' parsed";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("unknown precision '" + std::string(bad) + "'"), std::string::npos) << msg;
      for (const std::string& s : precision_spellings()) {
        EXPECT_NE(msg.find(s), std::string::npos) << msg;
      }
    }
  }
}

}  // namespace
}  // namespace qserve
