// Programmatic dependent launch (PDL, Hopper): a kernel launched with programmatic stream
// serialization may start while the kernel before it in the stream is still running, once every
// block of that one has called griddepcontrol.launch_dependents (or exited). Its blocks then run
// their prologue (index math, loads of data written before the previous kernel) in the previous
// kernel's tail, and wait in griddepcontrol.wait until it has completed and its writes are
// visible. In a decode step (~330 kernels, most of them a few microseconds to a few hundred) this
// hides each launch's ramp: block dispatch, the first dependent load round trip.
//
// The contract every kernel launched through launch_pdl keeps (pdl_device.cuh):
//  - pdl_wait() before its first access to memory the previous kernel may write or read, and on
//    every path before the block exits (so that its completion implies its predecessor's: the
//    kernel after it relies on that), and
//  - pdl_trigger() only after pdl_wait(), so that when a kernel starts, every kernel but the one
//    just before it has completed: a prologue may read what those wrote (page tables, cached K/V,
//    weights), never what the previous kernel writes, and may write nothing.
// Kernels without the attribute (cuBLASLt, memcpy) keep the usual full serialization.
//
// QSERVE_PDL=0 turns it off (A/B runs with one binary); unset or 1: on where the device has
// compute capability 9.0 or newer; anything else is an error.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <utility>

namespace qserve::cuda {

// "0" -> false, "1" -> true; throws qserve::Error naming the accepted values otherwise.
bool parse_pdl_setting(const std::string& text);

// An on/off switch from environment variable `name`: `unset_value` when unset or empty, else
// parse_pdl_setting's value; a bad value throws qserve::Error naming the variable. (QSERVE_PDL,
// QSERVE_DECODE_PREWAIT_KV; callers keep the result in a static.)
bool env_switch(const char* name, bool unset_value);

// Whether launch_pdl adds the attribute on the current device: the test override if set, else
// QSERVE_PDL (read once per process), and cc >= 9.0 (asked once per device and host thread).
bool pdl_enabled();

// Tests: -1 = back to QSERVE_PDL, 0 = off, 1 = on (still only on cc >= 9.0). Not thread-safe
// against concurrent launches; call between steps.
void set_pdl_override(int mode);

// Appends programmatic stream serialization to cfg's attributes (`attrs`, which cfg.attrs
// points to, with room for one more) when pdl_enabled(): for launches that carry other
// attributes too (the small-M GEMMs' cluster dimension).
inline void add_pdl_attribute(cudaLaunchConfig_t& cfg, cudaLaunchAttribute* attrs) {
  if (!pdl_enabled()) return;
  cudaLaunchAttribute& a = attrs[cfg.numAttrs++];
  a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  a.val.programmaticStreamSerializationAllowed = 1;
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization when
// pdl_enabled(). Returns the launch's error (the caller checks it, as check_launch would).
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                       cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  cfg.attrs = attr;
  cfg.numAttrs = 0;
  add_pdl_attribute(cfg, attr);
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace qserve::cuda
