// Dot-product tiles for small products whose W stays in its [N][K] row-major
// layout: y[r][c] = <x[r, :], W[c, :]> for up to 4 rows x 4 columns, vectorised
// over the contiguous K of both operands (each vector load of x serves 4 columns
// and each load of W 4 rows), the 16 accumulators' lanes summed by one
// transposing reduction. Used by the linear forward's small-batch path
// (linear.cpp) and by PackedMLP's narrow layers (packed_mlp.cpp); the callers
// are target_clones functions, so everything here is always_inline.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu/simd.h"

namespace conveyor {

// Lane i of one half-step of a transposing reduction: lanes from a, then from b,
// each keeping its low (or high) h lanes of every 2h-lane block.
template <int64_t L, int64_t H, bool HI>
constexpr int lane_of(size_t i) {
  const int64_t half = static_cast<int64_t>(i) / (L / 2), within = static_cast<int64_t>(i) % (L / 2);
  return static_cast<int>(half * L + (within / H) * 2 * H + (HI ? H : 0) + within % H);
}
template <typename V, int64_t L, int64_t H, bool HI, size_t... I>
CONVEYOR_INLINE V pick(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, lane_of<L, H, HI>(I)...);
}

// v[0..L) -> v[0] with v[0][s] = sum of v[s]'s lanes: log2(L) levels of pairwise
// shuffles and adds (2L - 2 shuffles, L - 1 adds), where L separate horizontal sums
// take ~L log2(L) of each.
template <typename T, int64_t H = Vec<T>::kLanes / 2>
CONVEYOR_INLINE void sum_lanes(typename Vec<T>::type* v, int64_t count = Vec<T>::kLanes) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  constexpr auto idx = std::make_index_sequence<L>{};
  for (int64_t i = 0; i < count / 2; ++i)
    v[i] = pick<V, L, H, false>(v[2 * i], v[2 * i + 1], idx) +
           pick<V, L, H, true>(v[2 * i], v[2 * i + 1], idx);
  if constexpr (H > 1) sum_lanes<T, H / 2>(v, count / 2);
}

// out[r * C + c] = <x[r, 0..K), w[c, 0..K)> for r < R, c < C; rows of x and of w
// are K elements apart.
template <typename T, int R, int C>
CONVEYOR_INLINE void dot_tile(const T* __restrict x, const T* __restrict w, int64_t K,
                              T* __restrict out) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  V acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = V{};
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    V xv[R], wv[C];
    for (int r = 0; r < R; ++r) std::memcpy(&xv[r], x + r * K + k, sizeof(V));
    for (int c = 0; c < C; ++c) std::memcpy(&wv[c], w + c * K + k, sizeof(V));
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] += xv[r] * wv[c];
  }
  // Lane sums of the R x C accumulators, L at a time (zero vectors pad the last group).
  constexpr int64_t kTile = R * C;
  for (int64_t g = 0; g < kTile; g += L) {
    V v[L];
    for (int64_t i = 0; i < L; ++i) v[i] = g + i < kTile ? acc[(g + i) / C][(g + i) % C] : V{};
    sum_lanes<T>(v);
    for (int64_t i = 0; i < L && g + i < kTile; ++i) out[g + i] = v[0][i];
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      for (int64_t j = k; j < K; ++j) out[r * C + c] += x[r * K + j] * w[c * K + j];
}

// dot_tile for R rows and `cols` (1-4) columns chosen at run time.
template <typename T, int R>
CONVEYOR_INLINE void dot_columns(const T* x, const T* w, int64_t K, int64_t cols, T* out) {
  switch (cols) {
    case 1: dot_tile<T, R, 1>(x, w, K, out); break;
    case 2: dot_tile<T, R, 2>(x, w, K, out); break;
    case 3: dot_tile<T, R, 3>(x, w, K, out); break;
    default: dot_tile<T, R, 4>(x, w, K, out);
  }
}

// y[m][n] = <x[m, :], w[n, :]> + b[n] (b may be null) for columns [n0, n1) of rows
// [m0, m0 + rows), rows <= 4, in tiles of up to CMAX columns; y's rows are N apart.
template <typename T, int64_t CMAX>
CONVEYOR_INLINE void dot_block(const T* x, const T* w, const T* b, int64_t K, int64_t N,
                               int64_t m0, int64_t rows, int64_t n0, int64_t n1, T* y) {
  T acc[16];
  const T* xm = x + m0 * K;
  for (int64_t n = n0; n < n1; n += CMAX) {
    const int64_t cols = std::min<int64_t>(CMAX, n1 - n);
    const T* wn = w + n * K;
    switch (rows) {
      case 1: dot_columns<T, 1>(xm, wn, K, cols, acc); break;
      case 2: dot_columns<T, 2>(xm, wn, K, cols, acc); break;
      case 3: dot_columns<T, 3>(xm, wn, K, cols, acc); break;
      default: dot_columns<T, 4>(xm, wn, K, cols, acc);
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        y[(m0 + r) * N + n + c] = acc[r * cols + c] + (b ? b[n + c] : T(0));
  }
}

}  // namespace conveyor
