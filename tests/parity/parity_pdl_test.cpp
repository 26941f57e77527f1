// Programmatic dependent launch (backend/cuda/pdl.h): the QSERVE_PDL setting and the override
// the tests use. Host code, so it runs without a GPU too. Whether every kernel launched with it
// keeps the contract (nothing the previous kernel writes is touched before griddepcontrol.wait)
// is checked end to end by GpuCudaGraphs.EngineGivesIdenticalTokensWithAndWithoutGraphs
// (tests/gpu/cuda_graphs_test.cpp): the same request mixes with PDL on and off, bit for bit.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "backend/cuda/pdl.h"
#include "core/error.h"

namespace qserve {
namespace {

TEST(ParityPdl, SettingParses) {
  EXPECT_FALSE(cuda::parse_pdl_setting("0"));
  EXPECT_TRUE(cuda::parse_pdl_setting("1"));
  // A mistyped A/B switch must not silently run the default.
  for (const char* bad : {"", "on", "off", "2", "true", " 1", "1 "}) {
    EXPECT_THROW(cuda::parse_pdl_setting(bad), Error) << "'" << bad << "'";
  }
}

// The environment switches (QSERVE_PDL, QSERVE_DECODE_PREWAIT_KV) go through env_switch; a
// variable name of the test's own keeps the real ones untouched.
TEST(ParityPdl, EnvSwitchReadsAndRejects) {
  const char* name = "QSERVE_TEST_PDL_SWITCH";
  unsetenv(name);
  EXPECT_TRUE(cuda::env_switch(name, true));
  EXPECT_FALSE(cuda::env_switch(name, false));
  setenv(name, "", 1);
  EXPECT_TRUE(cuda::env_switch(name, true));
  setenv(name, "0", 1);
  EXPECT_FALSE(cuda::env_switch(name, true));
  setenv(name, "1", 1);
  EXPECT_TRUE(cuda::env_switch(name, false));
  setenv(name, "yes", 1);
  try {
    cuda::env_switch(name, true);
    ADD_FAILURE() << "no error for 'yes'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  unsetenv(name);
}

TEST(ParityPdl, OverrideTurnsItOffAndBack) {
  cuda::set_pdl_override(0);
  EXPECT_FALSE(cuda::pdl_enabled());
  cuda::set_pdl_override(-1);  // back to QSERVE_PDL (and the device's capability)
  EXPECT_THROW(cuda::set_pdl_override(2), Error);
  EXPECT_THROW(cuda::set_pdl_override(-2), Error);
}

}  // namespace
}  // namespace qserve
