// The CUDA backend's entry points that exist so far: device discovery and the embedding gather.
// The full ops contract on the GPU is the CUDA-backend issue's work.
#pragma once

#include <cstdint>
#include <string>

namespace qserve::cuda {

// Number of visible CUDA devices (0 when there is no driver or no GPU; never throws).
int device_count();
// "NVIDIA H200 (sm_90, 139.8 GiB)" for device 0, or the reason there is none.
std::string device_summary();
// SMs of the current device, asked once per device and host thread (launch sizing of the
// kernels; 132, the H200's, when the query fails; never throws).
int current_device_sm_count();

// out[t, :] = fp32(table[ids[t], :]) for an fp16 table [vocab, hidden]; device pointers.
// Throws qserve::Error naming the op if the launch fails.
void embedding_f16(const uint16_t* table, const int32_t* ids, int64_t tokens, int64_t hidden,
                   float* out, void* stream);
// out[t, :] = table[ids[t], :] for an fp32 table [vocab, hidden] (the CPU reference model keeps
// its embedding in fp32); device pointers, exact copy. Ids must be in [0, vocab).
void embedding_f32(const float* table, const int32_t* ids, int64_t tokens, int64_t hidden,
                   float* out, void* stream);
// The same with some ids produced on the device: row t looks up feed_ids[feed[t]] where
// feed[t] >= 0, else ids[t] (the engine's overlapped decode steps take a sequence's input token
// from the previous step's samples without the host seeing it).
void embedding_f32_fed(const float* table, const int32_t* ids, const int32_t* feed,
                       const int32_t* feed_ids, int64_t tokens, int64_t hidden, float* out,
                       void* stream);

}  // namespace qserve::cuda
