// Device side of programmatic dependent launch (pdl.h states the contract). Both instructions
// are no-ops when the kernel was launched without the attribute, so a kernel carrying them stays
// correct under a plain <<<...>>> launch.
#pragma once

namespace qserve::cuda {

// Waits until the previous kernel in the stream has completed and its memory operations are
// visible to this grid. The "memory" clobber keeps the compiler from hoisting loads above it.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel in the stream launch once every block of this grid has called it (or
// exited). Call after pdl_wait(): see pdl.h.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace qserve::cuda
