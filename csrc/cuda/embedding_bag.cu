// Embedding bag on CUDA (contract in ops.h).
//
// Forward: when rows are 16-byte aligned (D * sizeof(T) a multiple of 16, the
// usual case), a group of up to 32 threads per bag, each owning 16 bytes of
// the row (8 bf16/fp16 or 4 fp32 values) loaded in one instruction, with four
// rows in flight per thread: 2-byte loads left bfloat16 at 66% of the copy
// bandwidth. Otherwise one block per (bag, 256-column slice) whose threads
// own one column each. Both walk the bag's indices and accumulate in float32.
// Backward: one block per index position; its bag is found by binary search
// in the offsets (no extra buffer), the scaled gradient row is added into a
// float32 grad_weight with atomics (rows repeat across bags), and the
// per_sample_weights gradient is a block-reduced dot product.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/common.cuh"
#include "ops.h"

namespace conveyor {
namespace {

using cuda::from_f;
using cuda::to_f;

constexpr int kCols = 256;

__device__ __forceinline__ long long bag_end(const long long* offsets, long long B, long long nnz,
                                             long long b) {
  return b + 1 < B ? offsets[b + 1] : nnz;
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ weight, long long D,
                               const long long* __restrict__ indices, long long nnz,
                               const long long* __restrict__ offsets, long long B,
                               const T* __restrict__ psw, int mode, T* __restrict__ out) {
  const long long b = blockIdx.x;
  const long long d = static_cast<long long>(blockIdx.y) * kCols + threadIdx.x;
  if (d >= D) return;
  const long long s = offsets[b], e = bag_end(offsets, B, nnz, b);
  float acc = 0.f;
  for (long long j = s; j < e; ++j) {
    const float scale = psw ? to_f(psw[j]) : 1.f;
    acc = fmaf(scale, to_f(weight[indices[j] * D + d]), acc);
  }
  if (mode == kBagMean && e > s) acc /= static_cast<float>(e - s);
  out[b * D + d] = from_f<T>(acc);
}

// acc[k] += scale * row[k] for the kVec values packed in one 16-byte load.
template <typename T>
__device__ __forceinline__ void add_packed(float* acc, const uint4& raw, float scale) {
  const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < static_cast<int>(sizeof(uint4) / sizeof(T)); ++k) {
    acc[k] = fmaf(scale, to_f(x[k]), acc[k]);
  }
}

template <typename T>
__global__ void forward_packed_kernel(const uint4* __restrict__ weight, long long packs,
                                      const long long* __restrict__ indices, long long nnz,
                                      const long long* __restrict__ offsets, long long B,
                                      const T* __restrict__ psw, int mode, int group,
                                      uint4* __restrict__ out) {
  constexpr int kVec = sizeof(uint4) / sizeof(T);
  constexpr int kInFlight = 4;
  const long long b =
      static_cast<long long>(blockIdx.x) * (blockDim.x / group) + threadIdx.x / group;
  if (b >= B) return;
  const long long s = offsets[b], e = bag_end(offsets, B, nnz, b);
  const float inv = (mode == kBagMean && e > s) ? 1.f / static_cast<float>(e - s) : 1.f;
  for (long long c = threadIdx.x % group; c < packs; c += group) {
    float acc[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) acc[k] = 0.f;
    long long j = s;
    for (; j + kInFlight <= e; j += kInFlight) {
      uint4 raw[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) raw[u] = __ldg(weight + indices[j + u] * packs + c);
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) add_packed<T>(acc, raw[u], psw ? to_f(psw[j + u]) : 1.f);
    }
    for (; j < e; ++j) {
      add_packed<T>(acc, __ldg(weight + indices[j] * packs + c), psw ? to_f(psw[j]) : 1.f);
    }
    uint4 packed;
    T* o = reinterpret_cast<T*>(&packed);
#pragma unroll
    for (int k = 0; k < kVec; ++k) o[k] = from_f<T>(acc[k] * inv);
    out[b * packs + c] = packed;
  }
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ weight,
                                long long D, const long long* __restrict__ indices, long long nnz,
                                const long long* __restrict__ offsets, long long B,
                                const T* __restrict__ psw, int mode, float* __restrict__ gw,
                                T* __restrict__ gpsw) {
  __shared__ float scratch[32];
  const long long j = blockIdx.x;
  // Last bag whose start is <= j (offsets are non-decreasing; empty bags skipped).
  long long lo = 0, hi = B - 1;
  while (lo < hi) {
    const long long mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= j) lo = mid; else hi = mid - 1;
  }
  const long long b = lo;
  const long long row = indices[j];
  float scale = psw ? to_f(psw[j]) : 1.f;
  if (mode == kBagMean) scale /= static_cast<float>(bag_end(offsets, B, nnz, b) - offsets[b]);
  float dot = 0.f;
  for (long long d = threadIdx.x; d < D; d += blockDim.x) {
    const float g = to_f(grad_out[b * D + d]);
    atomicAdd(gw + row * D + d, scale * g);
    if (gpsw) dot = fmaf(g, to_f(weight[row * D + d]), dot);
  }
  if (gpsw) {
    dot = cuda::block_sum(dot, scratch);
    if (threadIdx.x == 0) gpsw[j] = from_f<T>(dot);
  }
}

}  // namespace

std::string embedding_bag_forward_cuda(std::uintptr_t weight, int64_t V, int64_t D,
                                       std::uintptr_t indices, int64_t nnz,
                                       std::uintptr_t offsets, int64_t B, std::uintptr_t psw,
                                       int mode, std::uintptr_t out, int dtype,
                                       std::uintptr_t stream_handle) {
  (void)V;
  if (B == 0 || D == 0) return "";
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cuda::with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const long long row_bytes = D * static_cast<long long>(sizeof(T));
    if (row_bytes % 16 == 0 && weight % 16 == 0 && out % 16 == 0) {
      const long long packs = row_bytes / 16;
      int group = 1;  // threads per bag: a power of two up to a warp
      while (group < 32 && group < packs) group *= 2;
      const int threads = 256;
      const long long blocks = (B + threads / group - 1) / (threads / group);
      forward_packed_kernel<T><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
          reinterpret_cast<const uint4*>(weight), packs,
          reinterpret_cast<const long long*>(indices), nnz,
          reinterpret_cast<const long long*>(offsets), B, reinterpret_cast<const T*>(psw), mode,
          group, reinterpret_cast<uint4*>(out));
      return;
    }
    const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>((D + kCols - 1) / kCols));
    const int threads = static_cast<int>(std::min<int64_t>(kCols, ((D + 31) / 32) * 32));
    forward_kernel<T><<<grid, threads, 0, stream>>>(
        reinterpret_cast<const T*>(weight), D, reinterpret_cast<const long long*>(indices), nnz,
        reinterpret_cast<const long long*>(offsets), B, reinterpret_cast<const T*>(psw), mode,
        reinterpret_cast<T*>(out));
  });
  return cuda::last_error();
}

std::string embedding_bag_backward_cuda(std::uintptr_t grad_out, std::uintptr_t weight, int64_t V,
                                        int64_t D, std::uintptr_t indices, int64_t nnz,
                                        std::uintptr_t offsets, int64_t B, std::uintptr_t psw,
                                        int mode, std::uintptr_t grad_weight_f32,
                                        std::uintptr_t grad_psw, int dtype,
                                        std::uintptr_t stream_handle) {
  (void)V;
  if (nnz == 0 || B == 0) return "";
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cuda::with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int threads = static_cast<int>(std::min<int64_t>(kCols, std::max<int64_t>(32, ((D + 31) / 32) * 32)));
    backward_kernel<T><<<static_cast<unsigned>(nnz), threads, 0, stream>>>(
        reinterpret_cast<const T*>(grad_out), reinterpret_cast<const T*>(weight), D,
        reinterpret_cast<const long long*>(indices), nnz,
        reinterpret_cast<const long long*>(offsets), B, reinterpret_cast<const T*>(psw), mode,
        reinterpret_cast<float*>(grad_weight_f32), reinterpret_cast<T*>(grad_psw));
  });
  return cuda::last_error();
}

}  // namespace conveyor
