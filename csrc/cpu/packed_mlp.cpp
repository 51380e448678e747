// Whole-MLP inference with weights packed once (the serving path).
//
// A served model's weights do not change between calls, so each layer's W is
// copied once into NR-wide column panels laid out [panel][K][NR] (zero-padded
// past N). A call then runs, per layer, an R x NR register tile (R <= 8 rows
// of x read in place, no packing of either operand) over the whole K, starting
// from the bias, and applies the activation to the rows while they are in L1.
// Against the per-call path of linear.cpp this removes the packing of W
// (as much memory traffic as the product itself at batch <= 64) and the dot
// products with horizontal sums that path uses for batch <= 8.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu/activation.h"
#include "cpu/dot_tiles.h"
#include "cpu/simd.h"
#include "cpu/threads.h"
#include "ops.h"

namespace conveyor {
namespace {

constexpr int kRows = 8;  // rows of x per register tile (16 + 2 of the 32 zmm registers)
constexpr int64_t kBlock = 96;  // rows per parallel work item (a multiple of kRows)
// Layers narrower than this run as dot-product tiles (PackedLayer::rows): a 1-wide
// head cost 9-10% of the 64-256-256-1 MLP's time in a 32-wide panel.
constexpr int64_t kNarrowN = 16;

// y[r][0..nv) = sum_k x[r][k] * panel[k][0..NR) + bias for r < R.
template <typename T, int R>
CONVEYOR_INLINE void tile(int64_t K, const T* __restrict x, int64_t ldx, const T* __restrict panel,
                          const T* __restrict bias, T* __restrict y, int64_t ldy, int64_t nv) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  V acc[R][2];
  V b0, b1;
  std::memcpy(&b0, bias, sizeof(V));
  std::memcpy(&b1, bias + L, sizeof(V));
  for (int r = 0; r < R; ++r) {
    acc[r][0] = b0;
    acc[r][1] = b1;
  }
  for (int64_t k = 0; k < K; ++k) {
    V w0, w1;
    std::memcpy(&w0, panel + k * 2 * L, sizeof(V));
    std::memcpy(&w1, panel + k * 2 * L + L, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T xr = x[r * ldx + k];
      acc[r][0] += xr * w0;
      acc[r][1] += xr * w1;
    }
  }
  alignas(64) T row[2 * L];
  for (int r = 0; r < R; ++r) {
    std::memcpy(row, &acc[r][0], sizeof(V));
    std::memcpy(row + L, &acc[r][1], sizeof(V));
    std::memcpy(y + r * ldy, row, nv * sizeof(T));
  }
}

// Rows [m0, m1) of one layer for panel p, activation included.
template <typename T>
CONVEYOR_INLINE void layer_rows(const PackedLayer<T>& l, const T* x, int64_t m0, int64_t m1,
                                int64_t p, T* y) {
  constexpr int64_t NR = kNR<T>;
  const T* panel = l.panels.data() + p * l.K * NR;
  const T* bias = l.bias.data() + p * NR;
  const int64_t n0 = p * NR, nv = std::min(NR, l.N - n0);
  int64_t m = m0;
  for (; m + kRows <= m1; m += kRows)
    tile<T, kRows>(l.K, x + m * l.K, l.K, panel, bias, y + m * l.N + n0, l.N, nv);
  const T* xm = x + m * l.K;
  T* ym = y + m * l.N + n0;
  switch (m1 - m) {
    case 1: tile<T, 1>(l.K, xm, l.K, panel, bias, ym, l.N, nv); break;
    case 2: tile<T, 2>(l.K, xm, l.K, panel, bias, ym, l.N, nv); break;
    case 3: tile<T, 3>(l.K, xm, l.K, panel, bias, ym, l.N, nv); break;
    case 4: tile<T, 4>(l.K, xm, l.K, panel, bias, ym, l.N, nv); break;
    case 5: tile<T, 5>(l.K, xm, l.K, panel, bias, ym, l.N, nv); break;
    case 6: tile<T, 6>(l.K, xm, l.K, panel, bias, ym, l.N, nv); break;
    case 7: tile<T, 7>(l.K, xm, l.K, panel, bias, ym, l.N, nv); break;
    default: break;
  }
  // The activation in one pass over the rows just written (still in L1), not in each
  // tile: one inlined copy of the activation loops per clone instead of one per
  // tile height.
  if (l.act != kActNone) {
    for (int64_t r = m0; r < m1; ++r) activate_array<T>(l.act, y + r * l.N + n0, y + r * l.N + n0, nv);
  }
}

CONVEYOR_CLONES void layer_rows_f32(const PackedLayer<float>& l, const float* x, int64_t m0,
                                    int64_t m1, int64_t p, float* y) {
  layer_rows<float>(l, x, m0, m1, p, y);
}
CONVEYOR_CLONES void layer_rows_f64(const PackedLayer<double>& l, const double* x, int64_t m0,
                                    int64_t m1, int64_t p, double* y) {
  layer_rows<double>(l, x, m0, m1, p, y);
}
inline void layer_rows_any(const PackedLayer<float>& l, const float* x, int64_t m0, int64_t m1,
                           int64_t p, float* y) {
  layer_rows_f32(l, x, m0, m1, p, y);
}
inline void layer_rows_any(const PackedLayer<double>& l, const double* x, int64_t m0, int64_t m1,
                           int64_t p, double* y) {
  layer_rows_f64(l, x, m0, m1, p, y);
}

// Rows [m0, m1) of a narrow layer (l.rows kept), activation included: 4 x 4 tiles
// of dot products over K against W in its own layout.
template <typename T>
CONVEYOR_INLINE void narrow_rows(const PackedLayer<T>& l, const T* x, int64_t m0, int64_t m1,
                                 T* y) {
  for (int64_t m = m0; m < m1; m += 4)
    dot_block<T, 4>(x, l.rows.data(), l.bias.data(), l.K, l.N, m, std::min<int64_t>(4, m1 - m), 0,
                    l.N, y);
  // Whole rows were written: the block is contiguous, one pass (not one per row of N).
  if (l.act != kActNone) activate_array<T>(l.act, y + m0 * l.N, y + m0 * l.N, (m1 - m0) * l.N);
}

CONVEYOR_CLONES void narrow_rows_f32(const PackedLayer<float>& l, const float* x, int64_t m0,
                                     int64_t m1, float* y) {
  narrow_rows<float>(l, x, m0, m1, y);
}
CONVEYOR_CLONES void narrow_rows_f64(const PackedLayer<double>& l, const double* x, int64_t m0,
                                     int64_t m1, double* y) {
  narrow_rows<double>(l, x, m0, m1, y);
}
inline void narrow_rows_any(const PackedLayer<float>& l, const float* x, int64_t m0, int64_t m1,
                            float* y) {
  narrow_rows_f32(l, x, m0, m1, y);
}
inline void narrow_rows_any(const PackedLayer<double>& l, const double* x, int64_t m0,
                            int64_t m1, double* y) {
  narrow_rows_f64(l, x, m0, m1, y);
}

template <typename T>
void run_layer(const PackedLayer<T>& l, const T* x, int64_t M, T* y) {
  constexpr int64_t NR = kNR<T>;
  if (!l.rows.empty()) {
    const int64_t blocks = (M + kBlock - 1) / kBlock;
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for num_threads(cpu_threads()) schedule(static) if (M * l.N * std::max<int64_t>(l.K, 1) >= (1 << 15))
#endif
    for (int64_t b = 0; b < blocks; ++b)
      narrow_rows_any(l, x, b * kBlock, std::min(M, (b + 1) * kBlock), y);
    return;
  }
  const int64_t panels = (l.N + NR - 1) / NR;
  const int64_t blocks = (M + kBlock - 1) / kBlock;
  const int64_t items = blocks * panels;
#ifdef CONVEYOR_WITH_OPENMP
  // The same threshold as the per-call GEMM: below it a thread team costs more.
#pragma omp parallel for num_threads(cpu_threads()) schedule(static) if (M * l.N * std::max<int64_t>(l.K, 1) >= (1 << 15))
#endif
  // Panel-major within a block: one panel (K x NR) stays in L1 across the block's rows.
  for (int64_t i = 0; i < items; ++i) {
    const int64_t b = i / panels, p = i % panels;
    const int64_t m0 = b * kBlock, m1 = std::min(M, m0 + kBlock);
    layer_rows_any(l, x, m0, m1, p, y);
  }
}

}  // namespace

template <typename T>
PackedMLP<T>::PackedMLP(int64_t in_features, const std::vector<const T*>& w,
                        const std::vector<const T*>& b, const std::vector<int64_t>& out_features,
                        const std::vector<int>& acts) {
  constexpr int64_t NR = kNR<T>;
  if (w.empty() || w.size() != b.size() || w.size() != out_features.size() ||
      w.size() != acts.size()) {
    throw std::invalid_argument("PackedMLP: one weight, bias, width and activation per layer");
  }
  int64_t K = in_features;
  for (size_t i = 0; i < w.size(); ++i) {
    PackedLayer<T> l;
    l.K = K;
    l.N = out_features[i];
    l.act = acts[i];
    const int64_t panels = (l.N + NR - 1) / NR;
    l.panels.assign(static_cast<size_t>(panels * K * NR), T(0));
    l.bias.assign(static_cast<size_t>(panels * NR), T(0));
    for (int64_t n = 0; n < l.N; ++n) {
      T* dst = l.panels.data() + (n / NR) * K * NR + n % NR;
      const T* src = w[i] + n * K;
      for (int64_t k = 0; k < K; ++k) dst[k * NR] = src[k];
      if (b[i]) l.bias[n] = b[i][n];
    }
    if (l.N < kNarrowN && cpu_wide_vectors()) l.rows.assign(w[i], w[i] + l.N * K);
    layers_.push_back(std::move(l));
    K = out_features[i];
  }
}

template <typename T>
void PackedMLP<T>::forward(const T* x, int64_t M, T* out) const {
  if (M <= 0) return;
  int64_t widest = 0;
  for (size_t l = 0; l + 1 < layers_.size(); ++l) widest = std::max(widest, layers_[l].N);
  // Uninitialised (new T[], not a vector): zeroing it would cost as much as a small layer.
  std::unique_ptr<T[]> scratch(layers_.size() > 1 ? new T[2 * M * widest] : nullptr);
  const T* h = x;
  for (size_t l = 0; l < layers_.size(); ++l) {
    T* dst = l + 1 == layers_.size() ? out : scratch.get() + (l % 2) * M * widest;
    run_layer(layers_[l], h, M, dst);
    h = dst;
  }
}

template class PackedMLP<float>;
template class PackedMLP<double>;

}  // namespace conveyor
