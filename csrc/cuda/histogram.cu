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
//
// Large calls (from 2^20 values) skip most of the search with a lookup table
// (histogram_lut_kernel): each feature's range [first edge, last edge] is cut
// into `cells` equal cells; a value's cell, one multiply away, holds the count
// of edges in the cells below it and a flag for whether an edge lies inside
// the cell. Only values in a flagged cell (a few percent with 1024 cells and
// 21 edges) compare against edges, one or two of them. Exactness does not
// depend on the arithmetic being precise, only monotone: the edges' own cells
// come from the same float operations as the values' (cell_of), so an edge
// below a value's cell is below the value and one above it is above it.
//
// The table kernel can also stream its values through shared memory with
// asynchronous copies (cp.async, `stages` > 0): each thread keeps `stages`
// 16-byte groups in flight in a ring of its own in shared memory, so loads
// keep going while it counts and cost no registers. Run 8 found the kernel
// 0.26 ms slower than its reads alone (0.73 against 0.47 ms at 16M x 32)
// even without atomics: counting and loading took turns rather than
// overlapping, and four register loads in flight instead of two cost
// occupancy and gained nothing.
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <numeric>

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

// Cell of v among `cells` equal cells over a feature's edges: lo = first edge,
// scale = cells / (last edge - first edge). Monotone in v for every lo and
// scale IEEE division can give (0 for an infinite range, +inf for a zero one):
// NaN products (0 * inf) and values below the range land in cell 0, values
// above it in the last cell. Round-to-nearest intrinsics: no contraction into
// an FMA, so the table builder and the counting kernel agree to the bit.
__device__ __forceinline__ int cell_of(float v, float lo, float scale, int cells) {
  float t = __fmul_rn(__fsub_rn(v, lo), scale);
  t = fminf(fmaxf(t, 0.f), static_cast<float>(cells - 1));  // fmaxf(NaN, 0) is 0
  return __float2int_rz(t);
}

// Table entries: bits 0-6 the number of edges whose cell is below this one,
// bit 7 set when an edge's cell is this one (so n_edges <= 127).
constexpr int kLutMaxEdges = 127;
constexpr unsigned kLutHasEdge = 0x80u;

// One thread per (feature, cell); thread (f, 0) also stores f's (lo, scale).
__global__ void histogram_lut_build_kernel(const float* __restrict__ edges, int features,
                                           int n_edges, int cells, float2* __restrict__ params,
                                           unsigned char* __restrict__ lut) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long long>(features) * cells) return;
  const int f = static_cast<int>(i / cells);
  const int c = static_cast<int>(i - static_cast<long long>(f) * cells);
  const float* e = edges + static_cast<long long>(f) * n_edges;
  const float lo = e[0];
  const float scale = __fdiv_rn(static_cast<float>(cells), __fsub_rn(e[n_edges - 1], lo));
  unsigned below = 0, inside = 0;
  for (int k = 0; k < n_edges; ++k) {
    const int ck = cell_of(e[k], lo, scale, cells);
    below += ck < c;
    inside |= ck == c;
  }
  lut[i] = static_cast<unsigned char>(below | (inside ? kLutHasEdge : 0u));
  if (c == 0) params[f] = make_float2(lo, scale);
}

// Values of group g (VEC consecutive values; 4 in one 16-byte load).
template <int VEC>
__device__ __forceinline__ void load_group(const float* __restrict__ values, long long g,
                                           float (&v)[VEC]) {
  if constexpr (VEC == 4) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(values) + g);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    v[0] = __ldg(values + g);
  }
}

// Shared-memory counters, bins found through the table. Every thread keeps
// the same VEC features for the whole grid-stride loop (the host makes the
// grid stride, in values, a multiple of `features`), so their table rows,
// edges and (lo, scale) are fixed registers and pointers. STAGES == 0: values
// loaded into registers, two groups in flight; STAGES > 0 (VEC == 4 only):
// through a ring of STAGES float4 per thread in shared memory (see the top).
template <int VEC, int STAGES>
__global__ void __launch_bounds__(kThreads)
histogram_lut_kernel(const float* __restrict__ values, long long total, int features,
                     const float* __restrict__ edges, int n_edges, int cells,
                     const float2* __restrict__ params, const unsigned char* __restrict__ lut,
                     unsigned long long* __restrict__ counts) {
  static_assert(STAGES == 0 || VEC == 4, "the staged loads move 16-byte groups");
  extern __shared__ __align__(16) unsigned char smem[];
  const int slots = n_edges + 2;
  const int cnt_cells = features * slots;
  const int row = n_edges | 1;  // odd stride, as in the lifting kernel
  // The ring first (16-byte aligned), then the table: STAGES * kThreads * 16 bytes.
  float4* ring = reinterpret_cast<float4*>(smem);
  unsigned char* s_lut = smem + STAGES * kThreads * sizeof(float4);  // features * cells bytes
  unsigned int* s_counts = reinterpret_cast<unsigned int*>(s_lut + features * cells);
  float* s_edges = reinterpret_cast<float*>(s_counts + cnt_cells);

  const int lut_packs = features * cells / 16;
  for (int j = threadIdx.x; j < lut_packs; j += blockDim.x)
    reinterpret_cast<uint4*>(s_lut)[j] = __ldg(reinterpret_cast<const uint4*>(lut) + j);
  for (int j = threadIdx.x; j < cnt_cells; j += blockDim.x) s_counts[j] = 0;
  for (int j = threadIdx.x; j < features * n_edges; j += blockDim.x) {
    const int f = j / n_edges;
    s_edges[f * row + (j - f * n_edges)] = edges[j];
  }
  __syncthreads();

  const long long groups = total / VEC;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long g = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  // With VEC == 4, features % 4 == 0 and f0 % 4 == 0: f0 + j < features.
  const int f0 = static_cast<int>((g * VEC) % features);
  float lo[VEC], scale[VEC], top[VEC];
  const unsigned char* cell_row[VEC];
  const float* edge_row[VEC];
  unsigned int* count_row[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const int f = f0 + j;
    const float2 p = params[f];
    lo[j] = p.x, scale[j] = p.y;
    cell_row[j] = s_lut + f * cells;
    edge_row[j] = s_edges + f * row;
    count_row[j] = s_counts + f * slots;
    top[j] = edge_row[j][n_edges - 1];
  }
  // Two loads in flight per thread (this group and the next grid stride's,
  // same features): the loop is short, so one load alone would not keep
  // enough bytes in flight to cover the memory latency.
  auto count = [&](const float (&v)[VEC]) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const unsigned entry = cell_row[j][cell_of(v[j], lo[j], scale[j], cells)];
      int below = static_cast<int>(entry & ~kLutHasEdge);
      if (entry & kLutHasEdge) {
        while (below < n_edges && edge_row[j][below] <= v[j]) ++below;
      }
      atomicAdd(count_row[j] + slot_of(below, v[j], top[j], n_edges), 1u);
    }
  };
  if constexpr (STAGES > 0) {
    // Slot k of this thread's ring holds its groups g0 + i * stride with i % STAGES == k;
    // only this thread touches it, so waiting on its own copies is all the sync needed.
    const float4* src = reinterpret_cast<const float4*>(values);
    float4* mine = ring + threadIdx.x;
#pragma unroll
    for (int k = 0; k < STAGES - 1; ++k) {
      const long long gk = g + k * stride;
      if (gk < groups) __pipeline_memcpy_async(mine + k * kThreads, src + gk, sizeof(float4));
      __pipeline_commit();  // empty groups too: the wait below counts groups
    }
    int k = 0;
    for (; g < groups; g += stride) {
      // Refill the slot emptied last iteration with the group STAGES - 1 strides ahead.
      const long long ahead = g + (STAGES - 1) * stride;
      const int refill = k == 0 ? STAGES - 1 : k - 1;
      if (ahead < groups)
        __pipeline_memcpy_async(mine + refill * kThreads, src + ahead, sizeof(float4));
      __pipeline_commit();
      __pipeline_wait_prior(STAGES - 1);  // this iteration's group has landed
      const float4 q = mine[k * kThreads];
      const float v[VEC] = {q.x, q.y, q.z, q.w};
      count(v);
      k = k + 1 == STAGES ? 0 : k + 1;
    }
    __pipeline_wait_prior(0);
  } else {
    for (; g + stride < groups; g += 2 * stride) {
      float a[VEC], b[VEC];
      load_group<VEC>(values, g, a);
      load_group<VEC>(values, g + stride, b);
      count(a);
      count(b);
    }
    if (g < groups) {
      float a[VEC];
      load_group<VEC>(values, g, a);
      count(a);
    }
  }

  __syncthreads();
  for (int j = threadIdx.x; j < cnt_cells; j += blockDim.x) {
    const unsigned int c = s_counts[j];
    if (c) atomicAdd(counts + j, static_cast<unsigned long long>(c));
  }
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
    load_group<VEC>(values, g, v);
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

// Blocks for one full wave of resident blocks (each loops over its share), but
// enough that none of a block's 32-bit shared counters can overflow (a block
// sees at most 2^30 values), and no more than there is work for; a multiple
// of `multiple` (the table kernel's fixed-feature condition).
long long grid_blocks(long long items, long long total, int per_sm, int sms, long long multiple) {
  const long long wave = static_cast<long long>(std::max(per_sm, 1)) * sms;
  long long blocks = std::min<long long>((items + kThreads - 1) / kThreads, wave);
  blocks = std::max<long long>(blocks, total / (1LL << 30) + 1);
  return (blocks + multiple - 1) / multiple * multiple;
}

// Bytes of shared memory the table kernel needs per block, with a ring of
// `stages` float4 per thread (0: none).
size_t lut_smem(int64_t features, int64_t n_edges, int cells, int stages = 0) {
  return static_cast<size_t>(stages) * kThreads * sizeof(float4) +
         static_cast<size_t>(features) * cells +
         static_cast<size_t>(features) * (n_edges + 2) * sizeof(unsigned int) +
         static_cast<size_t>(features) * (n_edges | 1) * sizeof(float);
}

// Cells of the lookup table for this call, 0 for no table (see the header).
int lut_cells_for(long long total, int64_t features, int64_t n_edges, int64_t requested,
                  size_t smem_limit) {
  if (requested < 0 || n_edges > kLutMaxEdges) return 0;
  if (requested > 0) {  // forced (tests, benchmarks): must be a power of two >= 16
    const int cells = static_cast<int>(requested);
    return lut_smem(features, n_edges, cells) <= smem_limit ? cells : 0;
  }
  if (total < (1LL << 20)) return 0;  // small calls: one launch, no table to build
  // ~48 cells per edge, so that few values fall in a cell holding an edge
  // (quantile edges crowd where the data is dense), at most 1024, and the
  // largest that fits: the table is the bulk of the block's shared memory.
  int cells = 16;
  while (cells < 1024 && cells < 48 * n_edges) cells <<= 1;
  while (cells >= 64 && lut_smem(features, n_edges, cells) > smem_limit) cells >>= 1;
  return cells >= 64 ? cells : 0;
}

template <typename Kernel>
cudaError_t occupancy(int* per_sm, Kernel kernel, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      per_sm, reinterpret_cast<const void*>(kernel), kThreads, smem);
}

// Asynchronous-copy stages the table kernel uses unless told (0: register
// loads). On an H200 (2026-11-28, histogram_bench.py --cuda-variants) the
// staged kernel was slower at every depth: 0.96-1.09 ms for 2-8 in flight
// against 0.88 ms with register loads, 16M x 32 values.
constexpr int kAutoStages = 0;

using LutKernel = void (*)(const float*, long long, int, const float*, int, int, const float2*,
                          const unsigned char*, unsigned long long*);

// The table kernel for 4-wide loads and `stages` (0: register loads), nullptr
// for a depth without an instantiation.
LutKernel lut_kernel(bool vec4, int stages) {
  if (!vec4) return stages == 0 ? histogram_lut_kernel<1, 0> : nullptr;
  switch (stages) {
    case 0: return histogram_lut_kernel<4, 0>;
    case 2: return histogram_lut_kernel<4, 2>;
    case 3: return histogram_lut_kernel<4, 3>;
    case 4: return histogram_lut_kernel<4, 4>;
    case 6: return histogram_lut_kernel<4, 6>;
    case 8: return histogram_lut_kernel<4, 8>;
    default: return nullptr;
  }
}

// The table path: build the table into a stream-ordered scratch buffer, then
// count. Returns false (nothing launched) when the fixed-feature grid would
// be far larger than one wave or the scratch buffer cannot be had.
bool launch_lut(const float* values, long long total, int features, const float* edges,
                int n_edges, int cells, bool vec4, int stages, size_t smem_limit, int sms,
                unsigned long long* counts, cudaStream_t stream, cudaError_t* err) {
  const int vec = vec4 ? 4 : 1;
  // Staged loads need 4-wide groups and room for the ring beside the table.
  if (!vec4 || lut_smem(features, n_edges, cells, stages) > smem_limit) stages = 0;
  const size_t smem = lut_smem(features, n_edges, cells, stages);
  const LutKernel kernel = lut_kernel(vec4, stages);
  if (smem > 48 * 1024) {
    // Above the default dynamic limit: opt in, per kernel, to the device's
    // maximum rather than this call's size, so that calls from several host
    // threads only ever raise it and never undercut one another's launch.
    *err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem_limit));
    if (*err != cudaSuccess) return true;
  }
  int per_sm = 0;
  *err = occupancy(&per_sm, kernel, smem);
  if (*err != cudaSuccess) return true;
  // A grid stride (blocks * kThreads * vec values) that is a multiple of
  // `features` keeps each thread on the same features.
  const long long multiple =
      features / std::gcd(static_cast<long long>(features), static_cast<long long>(kThreads) * vec);
  if (multiple > 2LL * std::max(per_sm, 1) * sms) return false;
  const long long blocks = grid_blocks(total / vec, total, per_sm, sms, multiple);
  if (blocks > 0x7fffffffLL) return false;

  const size_t lut_offset = 256;  // params (features float2) first, the table 256-aligned
  const size_t params_bytes = static_cast<size_t>(features) * sizeof(float2);
  const size_t table_at = (params_bytes + lut_offset - 1) / lut_offset * lut_offset;
  void* scratch = nullptr;
  if (cudaMallocAsync(&scratch, table_at + static_cast<size_t>(features) * cells, stream) !=
      cudaSuccess) {
    cudaGetLastError();  // e.g. no stream-ordered allocator: the search kernel instead
    return false;
  }
  auto* params = static_cast<float2*>(scratch);
  auto* lut = static_cast<unsigned char*>(scratch) + table_at;
  const long long entries = static_cast<long long>(features) * cells;
  histogram_lut_build_kernel<<<static_cast<unsigned>((entries + kThreads - 1) / kThreads),
                               kThreads, 0, stream>>>(edges, features, n_edges, cells, params,
                                                      lut);
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
      values, total, features, edges, n_edges, cells, params, lut, counts);
  *err = cudaGetLastError();
  const cudaError_t freed = cudaFreeAsync(scratch, stream);
  if (*err == cudaSuccess) *err = freed;
  return true;
}

}  // namespace

std::string histogram_update_cuda(const float* values, int64_t rows, int64_t features,
                                  const float* edges, int64_t n_edges, int64_t* counts,
                                  int64_t lut_cells, int64_t stages,
                                  std::uintptr_t stream_handle) {
  const long long total = static_cast<long long>(rows) * features;
  if (lut_cells > 0 && (lut_cells < 16 || lut_cells > 4096 || (lut_cells & (lut_cells - 1))))
    return "lut_cells must be 0 (automatic), -1 (no table) or a power of two in [16, 4096]";
  if (stages < -1 || stages > 8 ||
      (stages > 0 && lut_kernel(true, static_cast<int>(stages)) == nullptr))
    return "stages must be 0 (automatic), -1 (loads into registers) or one of 2, 3, 4, 6, 8";
  const int depth = stages == 0 ? kAutoStages : static_cast<int>(std::max<int64_t>(stages, 0));
  if (total <= 0) return "";
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);

  int device = 0, sms = 0, smem_limit = 0, smem_optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlock, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return cudaGetErrorString(err);

  auto* out = reinterpret_cast<unsigned long long*>(counts);
  const bool vec4 = features % 4 == 0 && reinterpret_cast<std::uintptr_t>(values) % 16 == 0;
  const auto f = static_cast<int>(features);
  const auto n = static_cast<int>(n_edges);
  const int cells = lut_cells_for(total, features, n_edges, lut_cells, smem_limit);
  if (cells > 0 &&
      launch_lut(values, total, f, edges, n, cells, vec4, depth,
                 static_cast<size_t>(std::max(smem_limit, smem_optin)), sms, out, stream, &err)) {
    return err == cudaSuccess ? "" : cudaGetErrorString(err);
  }

  int padded = 1;
  while (padded <= n_edges) padded <<= 1;  // a power of two > n_edges (+inf pads)
  const int slots = static_cast<int>(n_edges + 2);
  const size_t smem = static_cast<size_t>(features) * slots * sizeof(unsigned int) +
                      static_cast<size_t>(features) * (padded + 1) * sizeof(float);
  const bool shared = smem <= static_cast<size_t>(smem_limit) && padded <= 64;  // 6 lifting steps
  int per_sm = 0;
  err = !shared ? occupancy(&per_sm, histogram_global_kernel, 0)
        : vec4  ? occupancy(&per_sm, histogram_shared_kernel<4>, smem)
                : occupancy(&per_sm, histogram_shared_kernel<1>, smem);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const long long items = vec4 && shared ? total / 4 : total;
  const auto grid = static_cast<unsigned>(
      std::min<long long>(grid_blocks(items, total, per_sm, sms, 1), 0x7fffffffLL));
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
