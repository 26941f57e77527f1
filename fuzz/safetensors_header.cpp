// libFuzzer target: parse_safetensors_header on arbitrary bytes, as if they were a whole file.
// Any outcome other than success or qserve::Error (a crash, a sanitizer report, another
// exception type) is a bug.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const qserve::SafetensorsHeader h =
        qserve::parse_safetensors_header(data, size, size, "fuzz-input");
    // A header that passed validation must describe bytes inside the input; touch them so ASan
    // would catch an offset that escaped the checks.
    volatile uint8_t sink = 0;
    for (const auto& [name, e] : h.tensors) {
      if (e.end > e.begin)
        sink = sink ^ data[h.data_offset + e.begin] ^ data[h.data_offset + e.end - 1];
    }
    (void)sink;
  } catch (const qserve::Error&) {
  }
  return 0;
}
