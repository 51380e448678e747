// CUDA histogram update. Same contract as the CPU op (see histogram.h).
//
// One thread per value over the flattened [rows * features] matrix (loads are
// coalesced because consecutive threads read consecutive features of a row).
// Each block keeps 32-bit counters and the edges in shared memory when they
// fit, so the atomics stay on chip, and flushes them once into the 64-bit
// global counts.
#include <cuda_runtime.h>

#include <algorithm>

#include "histogram.h"

namespace conveyor {
namespace {

constexpr int kThreads = 256;

// Number of edges <= v (upper bound), by branch-light binary search.
__device__ __forceinline__ int count_le(const float* e, int n, float v) {
  int lo = 0;
  while (n > 0) {
    const int half = n >> 1;
    const bool right = e[lo + half] <= v;
    lo = right ? lo + half + 1 : lo;
    n = right ? n - half - 1 : half;
  }
  return lo;
}

__device__ __forceinline__ int slot_of(const float* e, int n_edges, float v) {
  if (v != v) return n_edges + 1;
  if (v == e[n_edges - 1]) return n_edges - 1;
  return count_le(e, n_edges, v);
}

template <bool kShared>
__global__ void histogram_kernel(const float* __restrict__ values, long long total, int features,
                                 const float* __restrict__ edges, int n_edges,
                                 unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned char smem[];
  const int slots = n_edges + 2;
  const int cells = features * slots;
  unsigned int* s_counts = reinterpret_cast<unsigned int*>(smem);
  float* s_edges = reinterpret_cast<float*>(s_counts + cells);
  const float* e_base = edges;

  if (kShared) {
    for (int j = threadIdx.x; j < cells; j += blockDim.x) s_counts[j] = 0;
    for (int j = threadIdx.x; j < features * n_edges; j += blockDim.x) s_edges[j] = edges[j];
    __syncthreads();
    e_base = s_edges;
  }

  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int f = static_cast<int>(i % features);
    const float v = __ldg(values + i);
    const int s = slot_of(e_base + f * n_edges, n_edges, v);
    if (kShared) {
      atomicAdd(s_counts + f * slots + s, 1u);
    } else {
      atomicAdd(counts + f * slots + s, 1ull);
    }
  }

  if (kShared) {
    __syncthreads();
    for (int j = threadIdx.x; j < cells; j += blockDim.x) {
      const unsigned int c = s_counts[j];
      if (c) atomicAdd(counts + j, static_cast<unsigned long long>(c));
    }
  }
}

}  // namespace

std::string histogram_update_cuda(const float* values, int64_t rows, int64_t features,
                                  const float* edges, int64_t n_edges, int64_t* counts,
                                  std::uintptr_t stream_handle) {
  const long long total = static_cast<long long>(rows) * features;
  if (total <= 0) return "";
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);

  int device = 0, sms = 0, smem_limit = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlock, device);
  if (err != cudaSuccess) return cudaGetErrorString(err);

  const int slots = static_cast<int>(n_edges + 2);
  const size_t smem = static_cast<size_t>(features) * slots * sizeof(unsigned int) +
                      static_cast<size_t>(features) * n_edges * sizeof(float);
  // Enough blocks to fill the device, and enough that no block's 32-bit
  // shared counters can overflow (each block sees at most 2^30 values).
  long long blocks = std::min<long long>((total + kThreads - 1) / kThreads, 8LL * sms);
  blocks = std::max<long long>(blocks, total / (1LL << 30) + 1);
  blocks = std::min<long long>(blocks, 0x7fffffffLL);

  auto* out = reinterpret_cast<unsigned long long*>(counts);
  if (smem <= static_cast<size_t>(smem_limit)) {
    histogram_kernel<true><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        values, total, static_cast<int>(features), edges, static_cast<int>(n_edges), out);
  } else {
    histogram_kernel<false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        values, total, static_cast<int>(features), edges, static_cast<int>(n_edges), out);
  }
  err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

int cuda_device_count() {
  int n = 0;
  // No driver or no device is not an error here: the CPU ops still work.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace conveyor
