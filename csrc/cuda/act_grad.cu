// The fused linear's activation and bias gradients in one pass over dy and z
// (contract in ops.h): g = dy * act'(z) and db = the column sums of g.
//
// torch runs these as two kernels, and its column sum of a tall 16-bit
// [M, N] gradient ran at about a quarter of the copy bandwidth on an H200
// (0.13 ms of the 0.47 ms of GPU time in a training step of a 262144 x 256
// -> 256 layer, benchmarks/gpu-results/2026-11-28-h200). Here each block owns
// a tile of columns and a chunk of rows; each thread keeps its columns' sums
// in registers over 16-byte loads, the block adds its threads' sums in shared
// memory into one row of float32 partials, and a second small kernel adds the
// partial rows in a fixed order: the bias gradient is the same on every run
// (no float atomics), as torch's is.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/activation.cuh"
#include "cuda/common.cuh"
#include "ops.h"

namespace conveyor {
namespace {

using cuda::act_grad_times;
using cuda::from_f;
using cuda::to_f;

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;  // 2048 threads: a full SM, to keep loads in flight
constexpr int kMaxChunks = 65535;  // chunks go on the grid's y axis

// VEC elements moved by one load or store (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> grad_pack(const Pack<T, VEC>& dy, const Pack<T, VEC>& z,
                                                  int act) {
  Pack<T, VEC> g;
#pragma unroll
  for (int j = 0; j < VEC; ++j) g.v[j] = from_f<T>(act_grad_times(act, to_f(dy.v[j]), to_f(z.v[j])));
  return g;
}

// g only (no bias gradient): a grid-stride loop over packs.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
act_grad_kernel(const T* __restrict__ gy, const T* __restrict__ z, T* __restrict__ g,
                long long packs, int act) {
  using P = Pack<T, VEC>;
  const auto* dy = reinterpret_cast<const P*>(gy);
  const auto* zz = reinterpret_cast<const P*>(z);
  auto* out = reinterpret_cast<P*>(g);
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
#pragma unroll 2
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += stride)
    out[i] = grad_pack<T, VEC>(dy[i], zz[i], act);
}

// g, and the column sums of g over rows [blockIdx.y * rows, + rows) and the
// columns of tile blockIdx.x (`tile` packs wide, a power of two <= 32) into
// row blockIdx.y of `part` [chunks, N]. Threads sit tile-wide across the
// columns and kThreads / tile deep down the rows. The sums add g as stored:
// the bias gradient is the sum of what dx and dW are made of.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
act_grad_bias_kernel(const T* __restrict__ gy, const T* __restrict__ z, T* __restrict__ g,
                     float* __restrict__ part, long long M, int N, long long rows, int tile,
                     int act) {
  using P = Pack<T, VEC>;
  extern __shared__ float sums[];  // [kThreads / tile][tile * VEC]
  const int lane_c = threadIdx.x % tile, lane_r = threadIdx.x / tile, depth = kThreads / tile;
  const int width = tile * VEC;
  const long long col = (static_cast<long long>(blockIdx.x) * tile + lane_c) * VEC;
  float acc[VEC] = {};
  if (col < N) {
    const long long r0 = static_cast<long long>(blockIdx.y) * rows;
    const long long r1 = r0 + rows < M ? r0 + rows : M;
#pragma unroll 2
    for (long long r = r0 + lane_r; r < r1; r += depth) {
      const long long at = r * N + col;
      const P out = grad_pack<T, VEC>(*reinterpret_cast<const P*>(gy + at),
                                      *reinterpret_cast<const P*>(z + at), act);
      *reinterpret_cast<P*>(g + at) = out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += to_f(out.v[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) sums[lane_r * width + lane_c * VEC + j] = acc[j];
  __syncthreads();
  for (int c = threadIdx.x; c < width; c += kThreads) {
    const long long n = static_cast<long long>(blockIdx.x) * width + c;
    if (n >= N) continue;
    float s = 0.f;
    for (int r = 0; r < depth; ++r) s += sums[r * width + c];
    part[static_cast<long long>(blockIdx.y) * N + n] = s;
  }
}

// gb[n] = sum of part[k, n] over k, in a fixed order: 32 columns per block,
// 8 lanes of chunks each, added in lane order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
bias_grad_sum_kernel(const float* __restrict__ part, long long chunks, int N, T* __restrict__ gb) {
  __shared__ float lanes[kThreads / 32][33];
  const int c = threadIdx.x % 32, l = threadIdx.x / 32;
  const long long n = static_cast<long long>(blockIdx.x) * 32 + c;
  float s = 0.f;
  if (n < N)
    for (long long k = l; k < chunks; k += kThreads / 32) s += part[k * N + n];
  lanes[l][c] = s;
  __syncthreads();
  if (l == 0 && n < N) {
    float t = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) t += lanes[i][c];
    gb[n] = from_f<T>(t);
  }
}

template <typename T, int VEC>
cudaError_t launch(const T* gy, const T* z, T* g, long long M, int N, int act, float* part,
                   long long part_rows, T* gb, int sms, cudaStream_t stream) {
  if (gb == nullptr) {
    const long long packs = M * N / VEC;
    const long long blocks =
        std::min<long long>((packs + kThreads - 1) / kThreads, 1LL * kBlocksPerSm * sms);
    act_grad_kernel<T, VEC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(gy, z, g,
                                                                                     packs, act);
    return cudaGetLastError();
  }
  const long long row_packs = (N + VEC - 1) / VEC;
  int tile = 1;
  while (tile < 32 && tile < row_packs) tile <<= 1;
  const long long tiles = (row_packs + tile - 1) / tile;
  if (tiles > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  // Enough chunks of rows to fill the GPU, at most part_rows (the caller's buffer).
  long long chunks = (1LL * kBlocksPerSm * sms + tiles - 1) / tiles;
  chunks = std::max(1LL, std::min({chunks, part_rows, M, static_cast<long long>(kMaxChunks)}));
  const long long rows = (M + chunks - 1) / chunks;
  chunks = (M + rows - 1) / rows;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks));
  const size_t smem = static_cast<size_t>(kThreads) * VEC * sizeof(float);
  act_grad_bias_kernel<T, VEC><<<grid, kThreads, smem, stream>>>(gy, z, g, part, M, N, rows, tile,
                                                                 act);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  bias_grad_sum_kernel<T><<<static_cast<unsigned>((N + 31) / 32), kThreads, 0, stream>>>(
      part, chunks, N, gb);
  return cudaGetLastError();
}

}  // namespace

std::string act_grad_cuda(std::uintptr_t gy, std::uintptr_t z, int64_t M, int64_t N, int act,
                          std::uintptr_t g, std::uintptr_t part_f32, int64_t part_rows,
                          std::uintptr_t gb, int dtype, std::uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (N == 0) return "";
  if (M == 0) {  // an empty batch: the bias gradient is zero (all-zero bits in every dtype)
    if (gb == 0) return "";
    const size_t bytes = static_cast<size_t>(N) * (dtype == 0 ? 4 : 2);
    const cudaError_t err = cudaMemsetAsync(reinterpret_cast<void*>(gb), 0, bytes, stream);
    return err == cudaSuccess ? "" : cudaGetErrorString(err);
  }
  if (gb != 0 && (part_f32 == 0 || part_rows < 1)) return "part_f32: a buffer of >= 1 row is needed";
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  cuda::with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    const auto* gyp = reinterpret_cast<const T*>(gy);
    const auto* zp = reinterpret_cast<const T*>(z);
    auto* gp = reinterpret_cast<T*>(g);
    auto* part = reinterpret_cast<float*>(part_f32);
    auto* gbp = reinterpret_cast<T*>(gb);
    // 16-byte packs need rows that are whole packs and 16-byte aligned buffers
    // (a view at an offset is not).
    const bool packed = N % kVec == 0 && (gy | z | g) % 16 == 0;
    const int n = static_cast<int>(N);
    err = packed ? launch<T, kVec>(gyp, zp, gp, M, n, act, part, part_rows, gbp, sms, stream)
                 : launch<T, 1>(gyp, zp, gp, M, n, act, part, part_rows, gbp, sms, stream);
  });
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace conveyor
