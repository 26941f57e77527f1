#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_device.h"
#include "core/error.h"

namespace qserve::cuda {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(e));
}

__global__ void embedding_f16_kernel(const __half* table, const int32_t* ids, int64_t hidden,
                                     float* out) {
  const int64_t t = blockIdx.x;
  const __half* row = table + static_cast<int64_t>(ids[t]) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[t * hidden + i] = __half2float(row[i]);
  }
}

__global__ void embedding_f32_kernel(const float* table, const int32_t* ids, const int32_t* feed,
                                     const int32_t* feed_ids, int64_t hidden, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t f = feed != nullptr ? feed[t] : -1;
  const int32_t id = f >= 0 ? feed_ids[f] : ids[t];
  const float* row = table + static_cast<int64_t>(id) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[t * hidden + i] = row[i];
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int current_device_sm_count() {
  thread_local int cached_dev = -1, cached_n = 0;
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 132;
  }
  if (dev == cached_dev) return cached_n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    return 132;
  }
  cached_dev = dev;
  cached_n = n;
  return n;
}

std::string device_summary() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(e);
  if (n == 0) return "no CUDA device";
  cudaDeviceProp p{};
  check_cuda(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
  char buf[256];
  snprintf(buf, sizeof(buf), "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
           static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

void embedding_f16(const uint16_t* table, const int32_t* ids, int64_t tokens, int64_t hidden,
                   float* out, void* stream) {
  if (tokens == 0) return;
  embedding_f16_kernel<<<static_cast<unsigned>(tokens), 256, 0,
                         static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const __half*>(table), ids, hidden, out);
  check_cuda(cudaGetLastError(), "embedding_f16 launch");
}

void embedding_f32(const float* table, const int32_t* ids, int64_t tokens, int64_t hidden,
                   float* out, void* stream) {
  embedding_f32_fed(table, ids, nullptr, nullptr, tokens, hidden, out, stream);
}

void embedding_f32_fed(const float* table, const int32_t* ids, const int32_t* feed,
                       const int32_t* feed_ids, int64_t tokens, int64_t hidden, float* out,
                       void* stream) {
  if (tokens == 0) return;
  embedding_f32_kernel<<<static_cast<unsigned>(tokens), 256, 0,
                         static_cast<cudaStream_t>(stream)>>>(table, ids, feed, feed_ids, hidden,
                                                              out);
  check_cuda(cudaGetLastError(), "embedding_f32 launch");
}

}  // namespace qserve::cuda
