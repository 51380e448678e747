// Row-wise layer norm on CUDA (contract in ops.h).
//
// Forward: one block per row; mean, then the variance around it (two passes,
// the row is re-read from L1/L2), float32 statistics, y written in the
// input dtype. Backward: a grid-stride loop of blocks over rows; dx per row
// from two block reductions; dweight/dbias partial sums kept in shared
// memory per block (when 2N floats fit) and flushed with one atomic per
// column per block, else atomics per row.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/common.cuh"
#include "ops.h"

namespace conveyor {
namespace {

using cuda::from_f;
using cuda::to_f;

constexpr int kThreads = 256;
constexpr int kSharedCols = 6000;  // 2 x 6000 floats + scratch stay under 48 KiB

template <typename T>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
               long long N, float eps, T* __restrict__ y, float* __restrict__ mean,
               float* __restrict__ rstd) {
  __shared__ float scratch[32];
  const long long row = blockIdx.x;
  const T* xr = x + row * N;
  float s = 0.f;
  for (long long n = threadIdx.x; n < N; n += blockDim.x) s += to_f(xr[n]);
  const float mu = cuda::block_sum(s, scratch) / static_cast<float>(N);
  float ss = 0.f;
  for (long long n = threadIdx.x; n < N; n += blockDim.x) {
    const float d = to_f(xr[n]) - mu;
    ss = fmaf(d, d, ss);
  }
  const float r = rsqrtf(cuda::block_sum(ss, scratch) / static_cast<float>(N) + eps);
  for (long long n = threadIdx.x; n < N; n += blockDim.x) {
    float v = (to_f(xr[n]) - mu) * r;
    if (w) v *= to_f(w[n]);
    if (b) v += to_f(b[n]);
    y[row * N + n] = from_f<T>(v);
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                const float* __restrict__ mean, const float* __restrict__ rstd, long long M,
                long long N, T* __restrict__ gx, float* __restrict__ gw, float* __restrict__ gb,
                bool shared_partials) {
  __shared__ float scratch[32];
  extern __shared__ float part[];  // [2, N] when shared_partials
  if (shared_partials) {
    for (long long n = threadIdx.x; n < 2 * N; n += blockDim.x) part[n] = 0.f;
    __syncthreads();
  }
  for (long long row = blockIdx.x; row < M; row += gridDim.x) {
    const T* xr = x + row * N;
    const T* gr = gy + row * N;
    const float mu = mean[row], r = rstd[row];
    float sg = 0.f, sgx = 0.f;
    for (long long n = threadIdx.x; n < N; n += blockDim.x) {
      const float xhat = (to_f(xr[n]) - mu) * r;
      const float g0 = to_f(gr[n]);
      const float g = w ? g0 * to_f(w[n]) : g0;
      sg += g;
      sgx = fmaf(g, xhat, sgx);
      if (shared_partials) {
        part[n] = fmaf(g0, xhat, part[n]);
        part[N + n] += g0;
      } else {
        if (gw) atomicAdd(gw + n, g0 * xhat);
        if (gb) atomicAdd(gb + n, g0);
      }
    }
    if (gx) {
      const float a = cuda::block_sum(sg, scratch) / static_cast<float>(N);
      const float c = cuda::block_sum(sgx, scratch) / static_cast<float>(N);
      for (long long n = threadIdx.x; n < N; n += blockDim.x) {
        const float xhat = (to_f(xr[n]) - mu) * r;
        const float g = w ? to_f(gr[n]) * to_f(w[n]) : to_f(gr[n]);
        gx[row * N + n] = from_f<T>(r * (g - a - xhat * c));
      }
    }
  }
  if (shared_partials) {
    __syncthreads();
    for (long long n = threadIdx.x; n < N; n += blockDim.x) {
      if (gw) atomicAdd(gw + n, part[n]);
      if (gb) atomicAdd(gb + n, part[N + n]);
    }
  }
}

}  // namespace

std::string layer_norm_forward_cuda(std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias,
                                    int64_t M, int64_t N, double eps, std::uintptr_t y,
                                    std::uintptr_t mean, std::uintptr_t rstd, int dtype,
                                    std::uintptr_t stream_handle) {
  if (M == 0 || N == 0) return "";
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cuda::with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_kernel<T><<<static_cast<unsigned>(M), kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(weight),
        reinterpret_cast<const T*>(bias), N, static_cast<float>(eps), reinterpret_cast<T*>(y),
        reinterpret_cast<float*>(mean), reinterpret_cast<float*>(rstd));
  });
  return cuda::last_error();
}

std::string layer_norm_backward_cuda(std::uintptr_t gy, std::uintptr_t x, std::uintptr_t weight,
                                     std::uintptr_t mean, std::uintptr_t rstd, int64_t M,
                                     int64_t N, std::uintptr_t gx, std::uintptr_t gw_f32,
                                     std::uintptr_t gb_f32, int dtype,
                                     std::uintptr_t stream_handle) {
  if (M == 0 || N == 0) return "";
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const bool shared_partials = N <= kSharedCols;
  const size_t smem = shared_partials ? 2 * static_cast<size_t>(N) * sizeof(float) : 0;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(M, 4LL * sms));
  cuda::with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_kernel<T><<<blocks, kThreads, smem, stream>>>(
        reinterpret_cast<const T*>(gy), reinterpret_cast<const T*>(x),
        reinterpret_cast<const T*>(weight), reinterpret_cast<const float*>(mean),
        reinterpret_cast<const float*>(rstd), M, N, reinterpret_cast<T*>(gx),
        reinterpret_cast<float*>(gw_f32), reinterpret_cast<float*>(gb_f32), shared_partials);
  });
  return cuda::last_error();
}

}  // namespace conveyor
