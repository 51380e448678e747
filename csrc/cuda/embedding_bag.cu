// Embedding bag on CUDA (contract in ops.h).
//
// Forward: one block per (bag, 256-column slice); threads own columns, walk
// the bag's indices and accumulate in float32 (rows are read coalesced).
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
