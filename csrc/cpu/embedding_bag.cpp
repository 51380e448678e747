// Embedding bag on the CPU (contract in ops.h).
//
// Forward: chunks of 64 bags per iteration of a parallel loop; each bag
// accumulates its rows in registers and writes its own output row once, so no
// synchronisation is needed. Rows are prefetched ahead across bag boundaries.
// Backward: the scatter-add into grad_weight is made race-free without
// atomics by giving each thread the table rows r with r % threads == t; every
// thread scans the (small) index array and touches only its own rows.
#include <algorithm>
#include <string>
#include <vector>

#include <unistd.h>

#include "cpu/simd.h"
#include "cpu/threads.h"
#include "ops.h"

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif

namespace conveyor {
namespace {

// out[0..D) += s * row[0..D): the whole inner loop, written so it vectorizes.
template <typename T>
CONVEYOR_INLINE void axpy(int64_t D, T s, const T* __restrict row, T* __restrict out) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) out[d] += s * row[d];
}

template <typename T>
CONVEYOR_INLINE T dot(int64_t D, const T* __restrict a, const T* __restrict b) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < D; ++d) acc += a[d] * b[d];
  return acc;
}

inline int64_t bag_end(const int64_t* offsets, int64_t B, int64_t nnz, int64_t b) {
  return b + 1 < B ? offsets[b + 1] : nnz;
}

// Rows prefetched ahead of the one being added: the gather is latency-bound
// (random rows of a table far larger than cache), so keep several in flight.
// 24 (prefetcht0) against 8, 16, 32, 48, 64: 16 -> 24 made 10^6 x 128 rows
// ~10% faster (2.2 -> 1.9 ms), D = 16 ~5%, D = 64 the same; 48 and more lost
// again; prefetcht1 lost 20-40% everywhere (one thread, EPYC Zen 4).
constexpr int64_t kAhead = 24;

// Prefetches columns [d0, d0 + width) of a row some positions ahead. The
// address is computed in integers: the forward checks indices chunk by chunk,
// so a look-ahead index may not be checked yet, and a prefetch never faults
// but out-of-range pointer arithmetic would be undefined.
template <typename T>
CONVEYOR_INLINE void prefetch_row(const T* weight, int64_t row, int64_t D, int64_t d0,
                                  int64_t width) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(weight) +
                         (static_cast<uintptr_t>(row) * D + d0) * sizeof(T);
  for (int64_t l = 0; l < width * static_cast<int64_t>(sizeof(T)); l += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(base + l));
}

// Columns [d0, d0 + W) of one bag, W a compile-time width so the
// accumulator lives in registers across the whole bag: the inner loop is
// loads and FMAs with no store-to-load chain through `out`.
template <typename T, int64_t W>
CONVEYOR_INLINE void bag_columns(const T* __restrict weight, int64_t D, int64_t d0,
                                 const int64_t* indices, int64_t s, int64_t e, int64_t nnz,
                                 const T* psw, T scale, T* __restrict out) {
  constexpr int64_t kLine = 64 / sizeof(T);
  // Wide chunks keep two accumulator sets (even and odd positions of the
  // bag) to halve the FMA dependency chain. A single-line chunk keeps one:
  // its loop is bound by the row fetches, and the second set's extra work
  // made D=16 ~8% slower (interleaved timings, 82k indices).
  constexpr bool kTwo = W > kLine;
  T acc0[W] = {}, acc1[W] = {};
  int64_t j = s;
  for (; kTwo && j + 1 < e; j += 2) {
    // Prefetch by position in the whole index array, not the bag: bags are
    // short (tens of rows), and the next bag's rows must be in flight too.
    if (j + kAhead + 1 < nnz) {
      prefetch_row(weight, indices[j + kAhead], D, d0, W);
      prefetch_row(weight, indices[j + kAhead + 1], D, d0, W);
    }
    const T* r0 = weight + indices[j] * D + d0;
    const T* r1 = weight + indices[j + 1] * D + d0;
    const T w0 = psw ? psw[j] : T(1), w1 = psw ? psw[j + 1] : T(1);
#pragma omp simd
    for (int64_t d = 0; d < W; ++d) {
      acc0[d] += w0 * r0[d];
      acc1[d] += w1 * r1[d];
    }
  }
  for (; j < e; ++j) {  // the odd one out, or every row of a single-line chunk
    if (!kTwo && j + kAhead < nnz) prefetch_row(weight, indices[j + kAhead], D, d0, kLine);
    const T* r0 = weight + indices[j] * D + d0;
    const T w0 = psw ? psw[j] : T(1);
#pragma omp simd
    for (int64_t d = 0; d < W; ++d) acc0[d] += w0 * r0[d];
  }
#pragma omp simd
  for (int64_t d = 0; d < W; ++d) out[d0 + d] = (acc0[d] + acc1[d]) * scale;
}

// One bag: out[0..D) = scale * sum_j w_j * weight[indices[j]], j in [s, e),
// in column chunks of eight or four cache lines, then single lines, then a
// remainder (eight lines of float32 are 8 zmm accumulators with AVX-512).
template <typename T>
CONVEYOR_INLINE void bag(const T* __restrict weight, int64_t D, const int64_t* indices, int64_t s,
                         int64_t e, int64_t nnz, const T* psw, int mode, T* __restrict out) {
  constexpr int64_t kLine = 64 / sizeof(T);
  const T scale = (mode == kBagMean && e > s) ? T(1) / static_cast<T>(e - s) : T(1);
  int64_t d0 = 0;
  for (; d0 + 8 * kLine <= D; d0 += 8 * kLine)
    bag_columns<T, 8 * kLine>(weight, D, d0, indices, s, e, nnz, psw, scale, out);
  for (; d0 + 4 * kLine <= D; d0 += 4 * kLine)
    bag_columns<T, 4 * kLine>(weight, D, d0, indices, s, e, nnz, psw, scale, out);
  for (; d0 + kLine <= D; d0 += kLine)
    bag_columns<T, kLine>(weight, D, d0, indices, s, e, nnz, psw, scale, out);
  if (d0 < D) {
    const int64_t width = D - d0;
    T acc[kLine] = {};
    for (int64_t j = s; j < e; ++j) {
      const T* row = weight + indices[j] * D + d0;
      const T w = psw ? psw[j] : T(1);
      for (int64_t d = 0; d < width; ++d) acc[d] += w * row[d];
    }
    for (int64_t d = 0; d < width; ++d) out[d0 + d] = acc[d] * scale;
  }
}


// The checks read every index and offset once, so they are vectorized like
// the kernels: the baseline x86-64 build has no 64-bit unsigned compare and
// took 23 us for 82k indices (the whole forward took ~110), the AVX-512 clone
// 3 us. Positions are searched only on failure.
CONVEYOR_INLINE int index_bad(const int64_t* indices, int64_t n, int64_t V) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t j = 0; j < n; ++j)
    bad |= static_cast<int>(static_cast<uint64_t>(indices[j]) >= static_cast<uint64_t>(V));
  return bad;
}

CONVEYOR_CLONES int any_offset_bad(const int64_t* offsets, int64_t B, int64_t nnz) {
  int bad = offsets[0] != 0 || offsets[B - 1] > nnz;
#pragma omp simd reduction(| : bad)
  for (int64_t b = 1; b < B; ++b) bad |= static_cast<int>(offsets[b - 1] > offsets[b]);
  return bad;
}

CONVEYOR_CLONES int any_index_bad(const int64_t* indices, int64_t nnz, int64_t V) {
  return index_bad(indices, nnz, V);
}

// Whether the offsets of bags [b0, b1) decrease or leave [0, nnz]. The
// forward checks each chunk of bags just before gathering it (a separate
// pass over every offset and index first read them twice from L2/L3: ~7 us
// of ~75 for 82k indices). Pairs across a chunk boundary are compared by the
// chunk on the left (its last bag ends at the next chunk's first offset), so
// the chunks together check the whole array.
CONVEYOR_INLINE int chunk_offsets_bad(const int64_t* offsets, int64_t B, int64_t nnz,
                                      int64_t b0, int64_t b1) {
  const int64_t j0 = offsets[b0], j1 = bag_end(offsets, B, nnz, b1 - 1);
  int bad = (j0 < 0) | (j1 > nnz) | (offsets[b1 - 1] > j1);
#pragma omp simd reduction(| : bad)
  for (int64_t b = b0 + 1; b < b1; ++b) bad |= static_cast<int>(offsets[b - 1] > offsets[b]);
  return bad;
}

// Bags [b0, b1) of rows exactly W wide (W a compile-time constant, the
// common widths): the bag's whole accumulator is W / vector-width registers,
// the row address is a shift, and unweighted sums add instead of FMA-ing by
// 1 (the add's shorter latency bounds a one-register bag's chain).
// Two accumulator sets (even and odd positions) halve that chain when a row
// is one or two vectors; wider rows already have independent registers.
// Each index is range-checked as it is used (a compare and a branch never
// taken, cheaper than a separate pass); returns 1 at the first bad one.
// Wider accumulators (two sets up to 4 or 8 lines) were measured and lost
// or tied.
// kHalfRow prefetches only the first half of each row (rows of two lines or
// more), for tables that fit in L2 (see bags_by_width).
template <typename T, int64_t W, bool kWeighted, bool kNearEnd, bool kHalfRow>
CONVEYOR_INLINE int bags_fixed(const T* __restrict w, uint64_t V, const int64_t* __restrict idx,
                               const int64_t* __restrict offsets, int64_t B, int64_t nnz,
                               const T* __restrict psw, bool mean, T* __restrict out, int64_t b0,
                               int64_t b1) {
  constexpr int64_t kLine = 64 / sizeof(T);
  constexpr bool kTwo = W <= 2 * kLine;
  constexpr int64_t kFetched = kHalfRow && W >= 2 * kLine ? W / 2 : W;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = offsets[b], e = bag_end(offsets, B, nnz, b);
    T acc0[W] = {}, acc1[W] = {};
    int64_t j = s;
    for (; kTwo && j + 1 < e; j += 2) {
      if (!kNearEnd || j + kAhead + 1 < nnz) {
        prefetch_row(w, idx[j + kAhead], W, 0, kFetched);
        prefetch_row(w, idx[j + kAhead + 1], W, 0, kFetched);
      }
      const uint64_t i0 = idx[j], i1 = idx[j + 1];
      if (__builtin_expect((i0 >= V) | (i1 >= V), 0)) return 1;
      const T* r0 = w + i0 * W;
      const T* r1 = w + i1 * W;
      if constexpr (kWeighted) {
        const T w0 = psw[j], w1 = psw[j + 1];
#pragma omp simd
        for (int64_t d = 0; d < W; ++d) {
          acc0[d] += w0 * r0[d];
          acc1[d] += w1 * r1[d];
        }
      } else {
#pragma omp simd
        for (int64_t d = 0; d < W; ++d) {
          acc0[d] += r0[d];
          acc1[d] += r1[d];
        }
      }
    }
    for (; j < e; ++j) {
      if (!kNearEnd || j + kAhead < nnz) prefetch_row(w, idx[j + kAhead], W, 0, kFetched);
      const uint64_t i0 = idx[j];
      if (__builtin_expect(i0 >= V, 0)) return 1;
      const T* r = w + i0 * W;
      if constexpr (kWeighted) {
        const T w0 = psw[j];
#pragma omp simd
        for (int64_t d = 0; d < W; ++d) acc0[d] += w0 * r[d];
      } else {
#pragma omp simd
        for (int64_t d = 0; d < W; ++d) acc0[d] += r[d];
      }
    }
    const T scale = (mean && e > s) ? T(1) / static_cast<T>(e - s) : T(1);
    if constexpr (kTwo) {
#pragma omp simd
      for (int64_t d = 0; d < W; ++d) acc0[d] += acc1[d];
    }
#pragma omp simd
    for (int64_t d = 0; d < W; ++d) out[b * W + d] = acc0[d] * scale;
  }
  return 0;
}

template <typename T, int64_t W, bool kWeighted>
CONVEYOR_INLINE int bags_fixed_at(bool near_end, bool half_row, const T* w, uint64_t V,
                                  const int64_t* idx, const int64_t* offsets, int64_t B,
                                  int64_t nnz, const T* psw, bool mean, T* out, int64_t b0,
                                  int64_t b1) {
  if (half_row) {
    return near_end ? bags_fixed<T, W, kWeighted, true, true>(w, V, idx, offsets, B, nnz, psw,
                                                               mean, out, b0, b1)
                    : bags_fixed<T, W, kWeighted, false, true>(w, V, idx, offsets, B, nnz, psw,
                                                                mean, out, b0, b1);
  }
  return near_end ? bags_fixed<T, W, kWeighted, true, false>(w, V, idx, offsets, B, nnz, psw,
                                                              mean, out, b0, b1)
                  : bags_fixed<T, W, kWeighted, false, false>(w, V, idx, offsets, B, nnz, psw,
                                                               mean, out, b0, b1);
}

// bags_by_width's answer for a width without its own loop.
constexpr int kNoFixedWidth = -1;

template <typename T, bool kWeighted>
CONVEYOR_INLINE int bags_by_width(const T* w, int64_t V, int64_t D, const int64_t* idx,
                                  const int64_t* offsets, int64_t B, int64_t nnz, const T* psw,
                                  bool mean, bool half_row, T* out, int64_t b0, int64_t b1) {
  // Chunks that end more than kAhead positions before nnz prefetch without
  // a bounds test (~2% at D = 16 and 64: the loop is bound by instructions).
  const bool near_end = bag_end(offsets, B, nnz, b1 - 1) + kAhead + 1 >= nnz;
  switch (D) {
    case 16:
      return bags_fixed_at<T, 16, kWeighted>(near_end, half_row, w, V, idx, offsets, B, nnz,
                                               psw, mean, out, b0, b1);
    case 32:
      return bags_fixed_at<T, 32, kWeighted>(near_end, half_row, w, V, idx, offsets, B, nnz,
                                               psw, mean, out, b0, b1);
    case 64:
      return bags_fixed_at<T, 64, kWeighted>(near_end, half_row, w, V, idx, offsets, B, nnz,
                                               psw, mean, out, b0, b1);
    case 128:
      return bags_fixed_at<T, 128, kWeighted>(near_end, half_row, w, V, idx, offsets, B, nnz,
                                               psw, mean, out, b0, b1);
    default:
      return kNoFixedWidth;
  }
}

// Bags [b0, b1): one call per chunk of bags, so the per-ISA dispatch and the
// loop set-up are paid per chunk, not per (short) bag. half_row: see
// embedding_bag_forward_cpu.
// Returns 1 (output unspecified) on bad offsets or indices.
template <typename T>
CONVEYOR_INLINE int bags(const T* w, int64_t V, int64_t D, const int64_t* idx,
                         const int64_t* offsets, int64_t B, int64_t nnz, const T* psw, int mode,
                         bool half_row, T* out, int64_t b0, int64_t b1) {
  if (chunk_offsets_bad(offsets, B, nnz, b0, b1)) return 1;
  const bool mean = mode == kBagMean;
  const int fixed =
      psw ? bags_by_width<T, true>(w, V, D, idx, offsets, B, nnz, psw, mean, half_row, out, b0,
                                   b1)
          : bags_by_width<T, false>(w, V, D, idx, offsets, B, nnz, psw, mean, half_row, out, b0,
                                    b1);
  if (fixed != kNoFixedWidth) return fixed;
  const int64_t j0 = offsets[b0], j1 = bag_end(offsets, B, nnz, b1 - 1);
  if (index_bad(idx + j0, j1 - j0, V)) return 1;
  for (int64_t b = b0; b < b1; ++b)
    bag<T>(w, D, idx, offsets[b], bag_end(offsets, B, nnz, b), nnz, psw, mode, out + b * D);
  return 0;
}

CONVEYOR_CLONES int bags_f32(const float* w, int64_t V, int64_t D, const int64_t* idx,
                             const int64_t* offsets, int64_t B, int64_t nnz, const float* psw,
                             int mode, bool half_row, float* out, int64_t b0, int64_t b1) {
  return bags<float>(w, V, D, idx, offsets, B, nnz, psw, mode, half_row, out, b0, b1);
}
CONVEYOR_CLONES int bags_f64(const double* w, int64_t V, int64_t D, const int64_t* idx,
                             const int64_t* offsets, int64_t B, int64_t nnz, const double* psw,
                             int mode, bool half_row, double* out, int64_t b0, int64_t b1) {
  return bags<double>(w, V, D, idx, offsets, B, nnz, psw, mode, half_row, out, b0, b1);
}
inline int bags_any(const float* w, int64_t V, int64_t D, const int64_t* idx,
                    const int64_t* offsets, int64_t B, int64_t nnz, const float* psw, int mode,
                    bool half_row, float* out, int64_t b0, int64_t b1) {
  return bags_f32(w, V, D, idx, offsets, B, nnz, psw, mode, half_row, out, b0, b1);
}
inline int bags_any(const double* w, int64_t V, int64_t D, const int64_t* idx,
                    const int64_t* offsets, int64_t B, int64_t nnz, const double* psw, int mode,
                    bool half_row, double* out, int64_t b0, int64_t b1) {
  return bags_f64(w, V, D, idx, offsets, B, nnz, psw, mode, half_row, out, b0, b1);
}
CONVEYOR_CLONES void axpy_f32(int64_t D, float s, const float* row, float* out) {
  axpy<float>(D, s, row, out);
}
CONVEYOR_CLONES void axpy_f64(int64_t D, double s, const double* row, double* out) {
  axpy<double>(D, s, row, out);
}
CONVEYOR_CLONES float dot_f32(int64_t D, const float* a, const float* b) { return dot<float>(D, a, b); }
CONVEYOR_CLONES double dot_f64(int64_t D, const double* a, const double* b) {
  return dot<double>(D, a, b);
}
inline void axpy_any(int64_t D, float s, const float* row, float* out) { axpy_f32(D, s, row, out); }
inline void axpy_any(int64_t D, double s, const double* row, double* out) {
  axpy_f64(D, s, row, out);
}
inline float dot_any(int64_t D, const float* a, const float* b) { return dot_f32(D, a, b); }
inline double dot_any(int64_t D, const double* a, const double* b) { return dot_f64(D, a, b); }


// This core's L2 in bytes (glibc reads it from CPUID); 256 KiB, the
// smallest of current x86 cores, where the C library cannot tell.
int64_t l2_cache_bytes() {
  int64_t bytes = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
  bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  return bytes > 0 ? bytes : int64_t{256} << 10;
}

std::string check_offsets(const int64_t* offsets, int64_t B, int64_t nnz) {
  if (B == 0 || !any_offset_bad(offsets, B, nnz)) return "";
  if (offsets[0] != 0) return "offsets[0] must be 0";
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = offsets[b], e = bag_end(offsets, B, nnz, b);
    if (s > e || e > nnz) {
      return "offsets must be non-decreasing and at most len(indices) (bag " + std::to_string(b) +
             ")";
    }
  }
  return "";
}

std::string check_indices(const int64_t* indices, int64_t nnz, int64_t V) {
  if (!any_index_bad(indices, nnz, V)) return "";
  int64_t j = 0;
  while (static_cast<uint64_t>(indices[j]) < static_cast<uint64_t>(V)) ++j;
  return "index " + std::to_string(indices[j]) + " at position " + std::to_string(j) +
         " is out of range for a table of " + std::to_string(V) + " rows";
}

}  // namespace

template <typename T>
std::string embedding_bag_forward_cpu(const T* weight, int64_t V, int64_t D,
                                      const int64_t* indices, int64_t nnz,
                                      const int64_t* offsets, int64_t B,
                                      const T* per_sample_weights, int mode, T* out) {
  if (B > 0 && offsets[0] != 0) return "offsets[0] must be 0";
  constexpr int64_t kBagChunk = 64;
  const int64_t chunks = (B + kBagChunk - 1) / kBagChunk;
  // A table that fits in L2 is read from there after its first rows, and
  // prefetching a whole row then costs more load slots than the misses it
  // hides (the loop is bound by loads there): half a row is enough.
  // Interleaved kernel timings (one thread, Zen 4, 1 MiB L2): 5-9% faster
  // at D = 64 with 10^3-3*10^3 rows, 6-8% at D = 128 with 10^3, 2-5% at
  // D = 32 with 3*10^3; on tables beyond L2 it lost 2-4% (10^4 rows) and
  // 8-19% (10^6 rows), hence the size test.
  static const int64_t l2_bytes = l2_cache_bytes();
  const bool half_row = V * D * static_cast<int64_t>(sizeof(T)) <= l2_bytes;
  int bad = 0;
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for num_threads(cpu_threads()) schedule(static) reduction(| : bad) if (nnz * D >= (1 << 15))
#endif
  for (int64_t c = 0; c < chunks; ++c)
    bad |= bags_any(weight, V, D, indices, offsets, B, nnz, per_sample_weights, mode, half_row,
                    out, c * kBagChunk, std::min(B, (c + 1) * kBagChunk));
  if (!bad) return "";
  std::string err = check_offsets(offsets, B, nnz);
  if (err.empty()) err = check_indices(indices, nnz, V);
  return err;
}

template <typename T>
std::string embedding_bag_backward_cpu(const T* grad_out, const T* weight, int64_t V, int64_t D,
                                       const int64_t* indices, int64_t nnz,
                                       const int64_t* offsets, int64_t B,
                                       const T* per_sample_weights, int mode, T* grad_weight,
                                       T* grad_psw) {
  std::string err = check_offsets(offsets, B, nnz);
  if (err.empty()) err = check_indices(indices, nnz, V);
  if (!err.empty()) return err;
  // Bag of each index position; -1 for none: with no bags (B == 0) the indices
  // feed no output, so they get no gradient (indices before offsets[0] cannot
  // exist: offsets[0] == 0).
  std::vector<int64_t> bag_of(static_cast<size_t>(nnz), -1);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t e = bag_end(offsets, B, nnz, b);
    for (int64_t j = offsets[b]; j < e; ++j) bag_of[j] = b;
  }
  const bool parallel = nnz * D >= (1 << 15) || V * D >= (1 << 18);
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel num_threads(cpu_threads()) if (parallel)
#endif
  {
#ifdef CONVEYOR_WITH_OPENMP
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
#pragma omp for schedule(static)
#else
    const int64_t threads = 1, t = 0;
#endif
    for (int64_t r = 0; r < V; ++r) std::fill(grad_weight + r * D, grad_weight + (r + 1) * D, T(0));
    // (implicit barrier: the table is zeroed before any thread adds into it)
    for (int64_t j = 0; j < nnz; ++j) {
      const int64_t r = indices[j];
      if (r % threads != t) continue;
      const int64_t b = bag_of[j];
      if (b < 0) continue;
      T scale = per_sample_weights ? per_sample_weights[j] : T(1);
      if (mode == kBagMean) scale /= static_cast<T>(bag_end(offsets, B, nnz, b) - offsets[b]);
      axpy_any(D, scale, grad_out + b * D, grad_weight + r * D);
    }
    if (grad_psw) {
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t j = 0; j < nnz; ++j)
        grad_psw[j] =
            bag_of[j] < 0 ? T(0) : dot_any(D, weight + indices[j] * D, grad_out + bag_of[j] * D);
    }
  }
  return "";
}

template std::string embedding_bag_forward_cpu<float>(const float*, int64_t, int64_t,
                                                      const int64_t*, int64_t, const int64_t*,
                                                      int64_t, const float*, int, float*);
template std::string embedding_bag_forward_cpu<double>(const double*, int64_t, int64_t,
                                                       const int64_t*, int64_t, const int64_t*,
                                                       int64_t, const double*, int, double*);
template std::string embedding_bag_backward_cpu<float>(const float*, const float*, int64_t,
                                                       int64_t, const int64_t*, int64_t,
                                                       const int64_t*, int64_t, const float*, int,
                                                       float*, float*);
template std::string embedding_bag_backward_cpu<double>(const double*, const double*, int64_t,
                                                        int64_t, const int64_t*, int64_t,
                                                        const int64_t*, int64_t, const double*,
                                                        int, double*, double*);

}  // namespace conveyor
