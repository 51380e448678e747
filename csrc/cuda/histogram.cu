// CUDA histogram update. Same contract as the CPU op (see histogram.h).
//
// The op must stream the values at close to the device's memory bandwidth,
// so the work per value is kept to a few dozen instructions:
// - loads are coalesced (consecutive threads read consecutive values of the
//   row-major [rows, features] matrix) and, when features % 4 == 0 and the
//   pointer is 16-byte aligned, 128-bit wide (4 values per load);
// - a value's feature is tracked incrementally across the grid-stride loop,
//   not recomputed with a 64-bit modulo per value;
// - each feature's edges sit in shared memory padded with +inf to a power of
//   two, so the bin is found by a fixed, branch-free binary lifting; rows are
//   one float longer than that (an odd stride), so lanes searching different
//   features at the same step read different banks (a stride of 32 made them
//   all collide on one bank: 8-way conflicts at every step);
// - each block counts into 32-bit shared counters (lanes of a warp read
//   different features, so their atomics rarely collide) and flushes them
//   once into the 64-bit global counts.
// When the counters and edges do not fit in shared memory, a plain kernel
// counts straight into global memory.
#include <cuda_runtime.h>

#include <algorithm>

#include "histogram.h"

namespace conveyor {
namespace {

constexpr int kThreads = 256;

// Number of edges <= v (upper bound), by branch-light binary search over n edges.
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

// Slot of v from the count of edges <= v (histogram.h): the top edge closes
// the last bin, NaN has its own slot.
__device__ __forceinline__ int slot_of(int count, float v, float top, int n_edges) {
  count = (v == top) ? n_edges - 1 : count;
  return (v != v) ? n_edges + 1 : count;
}

// Slot of v for a feature whose edges `e` are padded with +inf to `padded`
// (a power of two > n_edges): binary lifting over the padded row counts the
// edges <= v; +inf values reach padded - 1 >= n_edges and are clamped.
__device__ __forceinline__ int padded_slot(const float* e, int padded, int n_edges, float v) {
  int lo = 0;
#pragma unroll
  for (int step = 32; step > 0; step >>= 1) {
    if (step < padded) lo += (e[lo + step - 1] <= v) ? step : 0;
  }
  return slot_of(min(lo, n_edges), v, e[n_edges - 1], n_edges);
}

// Shared-memory counters; VEC values per load (4: float4, 1: float).
template <int VEC>
__global__ void histogram_shared_kernel(const float* __restrict__ values, long long total,
                                        int features, const float* __restrict__ edges,
                                        int n_edges, int padded,
                                        unsigned long long* __restrict__ counts) {
  extern __shared__ unsigned char smem[];
  const int slots = n_edges + 2;
  const int cells = features * slots;
  const int row = padded + 1;  // odd stride: see the top of the file
  unsigned int* s_counts = reinterpret_cast<unsigned int*>(smem);
  float* s_edges = reinterpret_cast<float*>(s_counts + cells);

  for (int j = threadIdx.x; j < cells; j += blockDim.x) s_counts[j] = 0;
  for (int j = threadIdx.x; j < features * row; j += blockDim.x) {
    const int f = j / row, k = j - f * row;
    s_edges[j] = k < n_edges ? edges[f * n_edges + k] : __int_as_float(0x7f800000);  // +inf
  }
  __syncthreads();

  const long long groups = total / VEC;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long g = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Feature of this thread's first value, and how far it moves per grid stride.
  int f0 = static_cast<int>((g * VEC) % features);
  const int f_step = static_cast<int>((stride * VEC) % features);
  for (; g < groups; g += stride) {
    float v[VEC];
    if constexpr (VEC == 4) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(values) + g);
      v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
      v[0] = __ldg(values + g);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      // With VEC == 4, features % 4 == 0 and f0 % 4 == 0: f0 + j never wraps.
      const int f = f0 + j;
      const int s = padded_slot(s_edges + f * row, padded, n_edges, v[j]);
      atomicAdd(s_counts + f * slots + s, 1u);
    }
    f0 += f_step;
    f0 = f0 >= features ? f0 - features : f0;
  }

  __syncthreads();
  for (int j = threadIdx.x; j < cells; j += blockDim.x) {
    const unsigned int c = s_counts[j];
    if (c) atomicAdd(counts + j, static_cast<unsigned long long>(c));
  }
}

// Fallback when the per-block counters and edges exceed shared memory.
__global__ void histogram_global_kernel(const float* __restrict__ values, long long total,
                                        int features, const float* __restrict__ edges,
                                        int n_edges, unsigned long long* __restrict__ counts) {
  const int slots = n_edges + 2;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int f = static_cast<int>(i % features);
    const float v = __ldg(values + i);
    const float* e = edges + static_cast<long long>(f) * n_edges;
    const int s = slot_of(count_le(e, n_edges, v), v, e[n_edges - 1], n_edges);
    atomicAdd(counts + static_cast<long long>(f) * slots + s, 1ull);
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

  int padded = 1;
  while (padded <= n_edges) padded <<= 1;  // a power of two > n_edges (+inf pads)
  const int slots = static_cast<int>(n_edges + 2);
  const size_t smem = static_cast<size_t>(features) * slots * sizeof(unsigned int) +
                      static_cast<size_t>(features) * (padded + 1) * sizeof(float);
  const bool vec4 = features % 4 == 0 && reinterpret_cast<std::uintptr_t>(values) % 16 == 0;
  const bool shared = smem <= static_cast<size_t>(smem_limit) && padded <= 64;  // 6 lifting steps
  const void* kernel = !shared ? reinterpret_cast<const void*>(histogram_global_kernel)
                       : vec4  ? reinterpret_cast<const void*>(histogram_shared_kernel<4>)
                               : reinterpret_cast<const void*>(histogram_shared_kernel<1>);
  // One full wave of resident blocks (each loops over its share), but enough
  // blocks that none of the 32-bit shared counters can overflow (a block sees
  // at most 2^30 values), and no more than there is work for.
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                      shared ? smem : 0);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const long long items = vec4 ? total / 4 : total;
  long long blocks = std::min<long long>((items + kThreads - 1) / kThreads,
                                         static_cast<long long>(std::max(per_sm, 1)) * sms);
  blocks = std::max<long long>(blocks, total / (1LL << 30) + 1);
  blocks = std::min<long long>(blocks, 0x7fffffffLL);
  const auto grid = static_cast<unsigned>(blocks);
  const auto f = static_cast<int>(features);
  const auto n = static_cast<int>(n_edges);

  auto* out = reinterpret_cast<unsigned long long*>(counts);
  if (!shared) {
    histogram_global_kernel<<<grid, kThreads, 0, stream>>>(values, total, f, edges, n, out);
  } else if (vec4) {
    histogram_shared_kernel<4><<<grid, kThreads, smem, stream>>>(values, total, f, edges, n,
                                                                  padded, out);
  } else {
    histogram_shared_kernel<1><<<grid, kThreads, smem, stream>>>(values, total, f, edges, n,
                                                                  padded, out);
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
