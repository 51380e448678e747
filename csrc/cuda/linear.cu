// Fused linear + bias + activation on CUDA (contract in ops.h).
//
// A shared-memory tiled GEMM (64 x 64 tile per block, 16-deep K slices, 4 x 4
// outputs per thread, float32 accumulation) over strided operands, so the
// forward (x W^T) and both backward products (g W, g^T x) share one kernel;
// bias, pre-activation store and activation are fused into its epilogue.
// CUDA cores only: the dispatcher prefers the Triton kernel (tensor cores via
// tl.dot) on GPU; this one is the dependency-free fallback.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/activation.cuh"
#include "cuda/common.cuh"
#include "ops.h"

namespace conveyor {
namespace {

using cuda::act_fwd;
using cuda::act_grad_times;
using cuda::from_f;
using cuda::to_f;

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;

// C[M, N] = act(A[M, K] B[K, N] + bias), A/B by element strides.
template <typename T>
__global__ void __launch_bounds__(kThreads)
gemm_kernel(const T* __restrict__ A, long long a_rs, long long a_cs, const T* __restrict__ B,
            long long b_rs, long long b_cs, T* __restrict__ C, long long ldc, int M, int N, int K,
            const T* __restrict__ bias, int act, T* __restrict__ Z) {
  __shared__ float As[kBK][kBM + 4];
  __shared__ float Bs[kBK][kBN + 4];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kBK) {
    // Loads walk the operand's contiguous dimension with consecutive threads.
    for (int i = threadIdx.x; i < kBM * kBK; i += kThreads) {
      const int mm = a_cs == 1 ? i / kBK : i % kBM;
      const int kk = a_cs == 1 ? i % kBK : i / kBM;
      const int gm = m0 + mm, gk = k0 + kk;
      As[kk][mm] = (gm < M && gk < K) ? to_f(A[gm * a_rs + gk * a_cs]) : 0.f;
    }
    for (int i = threadIdx.x; i < kBK * kBN; i += kThreads) {
      const int nn = b_rs == 1 ? i / kBK : i % kBN;
      const int kk = b_rs == 1 ? i % kBK : i / kBN;
      const int gn = n0 + nn, gk = k0 + kk;
      Bs[kk][nn] = (gn < N && gk < K) ? to_f(B[gk * b_rs + gn * b_cs]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int gm = m0 + ty * 4 + i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int gn = n0 + tx * 4 + j;
      if (gn >= N) continue;
      float v = acc[i][j];
      if (bias) v += to_f(bias[gn]);
      if (Z) Z[gm * ldc + gn] = from_f<T>(v);
      C[gm * ldc + gn] = from_f<T>(act_fwd(act, v));
    }
  }
}

template <typename T>
__global__ void act_grad_kernel(const T* __restrict__ gy, const T* __restrict__ z,
                                T* __restrict__ g, long long total, int act) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    g[i] = from_f<T>(act_grad_times(act, to_f(gy[i]), to_f(z[i])));
  }
}

// gb[n] = sum_m g[m, n]: one thread per column, coalesced across the warp.
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ g, int M, int N, float* __restrict__ gb) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  float s = 0.f;
  for (int m = 0; m < M; ++m) s += to_f(g[static_cast<long long>(m) * N + n]);
  gb[n] = s;
}

template <typename T>
void launch_gemm(const T* A, long long a_rs, long long a_cs, const T* B, long long b_rs,
                 long long b_cs, T* C, int M, int N, int K, const T* bias, int act, T* Z,
                 cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  const dim3 grid((N + kBN - 1) / kBN, (M + kBM - 1) / kBM);
  gemm_kernel<T><<<grid, kThreads, 0, stream>>>(A, a_rs, a_cs, B, b_rs, b_cs, C, N, M, N, K,
                                                bias, act, Z);
}

}  // namespace

std::string linear_forward_cuda(std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, int64_t M,
                                int64_t N, int64_t K, int act, std::uintptr_t y, std::uintptr_t z,
                                int dtype, std::uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cuda::with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_gemm<T>(reinterpret_cast<const T*>(x), K, 1, reinterpret_cast<const T*>(w), 1, K,
                   reinterpret_cast<T*>(y), static_cast<int>(M), static_cast<int>(N),
                   static_cast<int>(K), reinterpret_cast<const T*>(b), act,
                   act == kActNone ? nullptr : reinterpret_cast<T*>(z), stream);
  });
  return cuda::last_error();
}

std::string linear_backward_cuda(std::uintptr_t gy, std::uintptr_t z, std::uintptr_t x,
                                 std::uintptr_t w, int64_t M, int64_t N, int64_t K, int act,
                                 std::uintptr_t gp_workspace, std::uintptr_t gx, std::uintptr_t gw,
                                 std::uintptr_t gb_f32, int dtype, std::uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cuda::with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* g = reinterpret_cast<const T*>(gy);
    const long long total = M * N;
    if (act != kActNone && total > 0) {
      T* gp = reinterpret_cast<T*>(gp_workspace);
      const int blocks = static_cast<int>(std::min<long long>((total + 255) / 256, 65535));
      act_grad_kernel<T><<<blocks, 256, 0, stream>>>(g, reinterpret_cast<const T*>(z), gp, total,
                                                     act);
      g = gp;
    }
    const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
    if (gx) {  // dx[M, K] = g[M, N] W[N, K]
      launch_gemm<T>(g, N, 1, reinterpret_cast<const T*>(w), K, 1, reinterpret_cast<T*>(gx), m, k,
                     n, nullptr, kActNone, nullptr, stream);
    }
    if (gw) {  // dW[N, K] = g^T[N, M] x[M, K]
      launch_gemm<T>(g, 1, N, reinterpret_cast<const T*>(x), K, 1, reinterpret_cast<T*>(gw), n, k,
                     m, nullptr, kActNone, nullptr, stream);
    }
    if (gb_f32 && n > 0) {
      column_sum_kernel<T><<<(n + 255) / 256, 256, 0, stream>>>(g, m, n,
                                                                reinterpret_cast<float*>(gb_f32));
    }
  });
  return cuda::last_error();
}

}  // namespace conveyor
