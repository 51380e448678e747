// Fused linear + bias + activation on the CPU: a packed, cache-blocked GEMM
// (BLIS-style: B packed in NR-wide column panels, A in MR-high row panels, an
// MR x NR register-tile micro-kernel) whose epilogue adds the bias, keeps the
// pre-activation for the backward and applies the activation while the tile
// is still in registers/L1. The backward reuses the same GEMM with strides
// (dx = g W, dW = g^T x), after one fused pass g = dy * act'(z).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cpu/activation.h"
#include "cpu/dot_tiles.h"
#include "cpu/simd.h"
#include "cpu/threads.h"
#include "ops.h"

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif


namespace conveyor {
namespace {

constexpr int64_t kMR = 6;     // rows of the register tile
constexpr int64_t kKC = 256;   // depth of one packed block (A and B panels stay in L1/L2)
constexpr int64_t kMC = 96;    // rows per A block (multiple of kMR)
constexpr int64_t kNC = 256;   // columns per output tile handed to a thread

// tile[kMR][kNR] = sum_k a[k][0..kMR) (x) b[k][0..kNR).
template <typename T>
__attribute__((always_inline)) inline void micro_body(int64_t kc, const T* __restrict a,
                                                      const T* __restrict b, T* __restrict tile) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  V acc[kMR][2];
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = V{};
  for (int64_t k = 0; k < kc; ++k) {
    V b0, b1;
    std::memcpy(&b0, b + k * 2 * L, sizeof(V));
    std::memcpy(&b1, b + k * 2 * L + L, sizeof(V));
    const T* ak = a + k * kMR;
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      acc[i][0] += ak[i] * b0;
      acc[i][1] += ak[i] * b1;
    }
  }
  for (int i = 0; i < kMR; ++i) {
    std::memcpy(tile + i * 2 * L, &acc[i][0], sizeof(V));
    std::memcpy(tile + i * 2 * L + L, &acc[i][1], sizeof(V));
  }
}

CONVEYOR_CLONES void micro_f32(int64_t kc, const float* a, const float* b, float* tile) {
  micro_body<float>(kc, a, b, tile);
}
CONVEYOR_CLONES void micro_f64(int64_t kc, const double* a, const double* b, double* tile) {
  micro_body<double>(kc, a, b, tile);
}
inline void micro(int64_t kc, const float* a, const float* b, float* t) { micro_f32(kc, a, b, t); }
inline void micro(int64_t kc, const double* a, const double* b, double* t) { micro_f64(kc, a, b, t); }

CONVEYOR_CLONES void activate_f32(int act, const float* v, float* out, int64_t n) {
  activate_array<float>(act, v, out, n);
}
CONVEYOR_CLONES void activate_f64(int act, const double* v, double* out, int64_t n) {
  activate_array<double>(act, v, out, n);
}
CONVEYOR_CLONES void activate_grad_f32(int act, const float* gy, const float* z, float* g,
                                       int64_t n) {
  activate_grad_array<float>(act, gy, z, g, n);
}
CONVEYOR_CLONES void activate_grad_f64(int act, const double* gy, const double* z, double* g,
                                       int64_t n) {
  activate_grad_array<double>(act, gy, z, g, n);
}
inline void activate_any(int act, const float* v, float* o, int64_t n) { activate_f32(act, v, o, n); }
inline void activate_any(int act, const double* v, double* o, int64_t n) {
  activate_f64(act, v, o, n);
}
inline void activate_grad_any(int act, const float* gy, const float* z, float* g, int64_t n) {
  activate_grad_f32(act, gy, z, g, n);
}
inline void activate_grad_any(int act, const double* gy, const double* z, double* g, int64_t n) {
  activate_grad_f64(act, gy, z, g, n);
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T, FreeDeleter> aligned_buffer(int64_t n) {
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(T) + 63) / 64) * 64;
  return std::unique_ptr<T, FreeDeleter>(static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64)));
}

// C[M, N] (row stride ldc) = A[M, K] B[K, N], A and B addressed by element
// strides (so transposed operands need no copy). With `epilogue`, the last
// K block adds bias[n], stores the pre-activation into Z (same layout as C)
// when Z is set, and applies `act`.
template <typename T>
struct Gemm {
  int64_t M, N, K;
  const T* A; int64_t a_rs, a_cs;
  const T* B; int64_t b_rs, b_cs;
  T* C; int64_t ldc;
  bool epilogue = false;
  const T* bias = nullptr;
  int act = kActNone;
  T* Z = nullptr;
};

template <typename T>
void pack_b(const Gemm<T>& g, int64_t pc, int64_t kc, int64_t panel, T* dst) {
  constexpr int64_t NR = kNR<T>;
  const int64_t n0 = panel * NR;
  const int64_t nv = std::min(NR, g.N - n0);
  if (g.b_rs == 1) {  // B = W^T: walk each W row contiguously
    for (int64_t j = 0; j < NR; ++j) {
      if (j < nv) {
        const T* src = g.B + (n0 + j) * g.b_cs + pc;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
      }
    }
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = g.B + (pc + k) * g.b_rs + n0 * g.b_cs;
      T* d = dst + k * NR;
      for (int64_t j = 0; j < nv; ++j) d[j] = src[j * g.b_cs];
      for (int64_t j = nv; j < NR; ++j) d[j] = T(0);
    }
  }
}

template <typename T>
void pack_a(const Gemm<T>& g, int64_t ic, int64_t mc, int64_t pc, int64_t kc, T* dst) {
  for (int64_t ir = 0; ir < mc; ir += kMR) {
    T* d = dst + ir * kc;
    const int64_t mv = std::min(kMR, mc - ir);
    if (g.a_cs == 1) {
      for (int64_t i = 0; i < kMR; ++i) {
        if (i < mv) {
          const T* src = g.A + (ic + ir + i) * g.a_rs + pc;
          for (int64_t k = 0; k < kc; ++k) d[k * kMR + i] = src[k];
        } else {
          for (int64_t k = 0; k < kc; ++k) d[k * kMR + i] = T(0);
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = g.A + (ic + ir) * g.a_rs + (pc + k) * g.a_cs;
        for (int64_t i = 0; i < mv; ++i) d[k * kMR + i] = src[i * g.a_rs];
        for (int64_t i = mv; i < kMR; ++i) d[k * kMR + i] = T(0);
      }
    }
  }
}

template <typename T>
CONVEYOR_INLINE void store_tile_body(const Gemm<T>& g, const T* tile, int64_t m0, int64_t mv,
                                     int64_t n0, int64_t nv, bool first, bool last) {
  constexpr int64_t NR = kNR<T>;
  for (int64_t i = 0; i < mv; ++i) {
    T* c = g.C + (m0 + i) * g.ldc + n0;
    const T* t = tile + i * NR;
    if (!(last && g.epilogue)) {
      if (first) {
        for (int64_t j = 0; j < nv; ++j) c[j] = t[j];
      } else {
        for (int64_t j = 0; j < nv; ++j) c[j] += t[j];
      }
      continue;
    }
    T* z = g.Z ? g.Z + (m0 + i) * g.ldc + n0 : nullptr;
    // Bias and pre-activation in one vectorizable pass, then the activation
    // over the row of the tile (vectorized, cloned per ISA).
    T v[NR];
    for (int64_t j = 0; j < nv; ++j) v[j] = first ? t[j] : c[j] + t[j];
    if (g.bias)
      for (int64_t j = 0; j < nv; ++j) v[j] += g.bias[n0 + j];
    if (z)
      for (int64_t j = 0; j < nv; ++j) z[j] = v[j];
    activate_array<T>(g.act, v, c, nv);
  }
}

// Cloned per ISA like the micro-kernel: as a plain template the epilogue ran
// baseline SSE code and called the activation once per tile row.
CONVEYOR_CLONES void store_tile_f32(const Gemm<float>& g, const float* tile, int64_t m0,
                                    int64_t mv, int64_t n0, int64_t nv, bool first, bool last) {
  store_tile_body<float>(g, tile, m0, mv, n0, nv, first, last);
}
CONVEYOR_CLONES void store_tile_f64(const Gemm<double>& g, const double* tile, int64_t m0,
                                    int64_t mv, int64_t n0, int64_t nv, bool first, bool last) {
  store_tile_body<double>(g, tile, m0, mv, n0, nv, first, last);
}
inline void store_tile(const Gemm<float>& g, const float* tile, int64_t m0, int64_t mv,
                       int64_t n0, int64_t nv, bool first, bool last) {
  store_tile_f32(g, tile, m0, mv, n0, nv, first, last);
}
inline void store_tile(const Gemm<double>& g, const double* tile, int64_t m0, int64_t mv,
                       int64_t n0, int64_t nv, bool first, bool last) {
  store_tile_f64(g, tile, m0, mv, n0, nv, first, last);
}

template <typename T>
void gemm(const Gemm<T>& g) {
  constexpr int64_t NR = kNR<T>;
  if (g.M <= 0 || g.N <= 0) return;
  const int64_t k_blocks = std::max<int64_t>(1, (g.K + kKC - 1) / kKC);  // K == 0: one empty block
  const int64_t n_panels = (g.N + NR - 1) / NR;
  const int64_t m_blocks = (g.M + kMC - 1) / kMC;
  const int64_t n_blocks = (g.N + kNC - 1) / kNC;
  const int64_t tiles = m_blocks * n_blocks;
  auto b_packed = aligned_buffer<T>(n_panels * kKC * NR);
  T* bp = b_packed.get();

#ifdef CONVEYOR_WITH_OPENMP
  // Small products finish before a thread team would start.
  const bool parallel = g.M * g.N * std::max<int64_t>(g.K, 1) >= (1 << 15);
#pragma omp parallel num_threads(cpu_threads()) if (parallel)
#endif
  {
    auto a_packed = aligned_buffer<T>(kMC * kKC);
    alignas(64) T tile[kMR * kNR<T>];
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      const int64_t pc = kb * kKC;
      const int64_t kc = std::min(kKC, g.K - pc);
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t p = 0; p < n_panels; ++p) pack_b(g, pc, kc, p, bp + p * kc * NR);
      // (implicit barrier: every panel is packed before any tile uses it)
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t ic = (t / n_blocks) * kMC, jc = (t % n_blocks) * kNC;
        const int64_t mc = std::min(kMC, g.M - ic), nc = std::min(kNC, g.N - jc);
        pack_a(g, ic, mc, pc, kc, a_packed.get());
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const T* b = bp + ((jc + jr) / NR) * kc * NR;
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            micro(kc, a_packed.get() + ir * kc, b, tile);
            store_tile(g, tile, ic + ir, std::min(kMR, mc - ir), jc + jr, std::min(NR, nc - jr),
                       kb == 0, kb == k_blocks - 1);
          }
        }
      }
    }
  }
}

// Small batches: y[m, n] = <x[m, :], W[n, :]> + b[n] as dot products over the
// contiguous K of both operands, in tiles of up to 4 rows x 4 columns of y: each
// vector load of x serves 4 columns and each load of W 4 rows (16 FMAs per 8
// loads), and the 16 accumulators' lane sums come out of one transposing
// reduction. No packing: transposing W into the GEMM's column panels costs ~0.3 ns
// an element of W (20 us at 256 x 256), more than the product at these sizes.
//
// Where this beats the GEMM (one thread, AVX-512; benchmarks/README.md): up to 16
// rows at any K, 64 rows from K = 128, 128 from K = 256 and 256 from K = 512 (at
// 16-128 rows of 1024 -> 1024: 2.0-2.3x torch against the GEMM's 0.9-1.6x; from
// 512 rows the two are level), and at any batch for layers of fewer than 16
// outputs, or 64 from K = 128 (1024x512->8: 2.9x torch against the GEMM's 0.63x,
// 2048x256->32 1.9x against 1.4x). The 4 x 4 tile needs 24 vector registers:
// without AVX-512 (16) tiles are 4 rows x 1 column and the path keeps to 8 rows,
// as it was measured before the wider tile.
constexpr int64_t kSmallM = 8;

CONVEYOR_CLONES void small_m_f32(const float* x, const float* w, const float* b, int64_t K,
                                 int64_t N, int64_t m0, int64_t rows, int64_t n0, int64_t n1,
                                 float* y) {
  if (cpu_wide_vectors()) {
    dot_block<float, 4>(x, w, b, K, N, m0, rows, n0, n1, y);
  } else {
    dot_block<float, 1>(x, w, b, K, N, m0, rows, n0, n1, y);
  }
}
CONVEYOR_CLONES void small_m_f64(const double* x, const double* w, const double* b, int64_t K,
                                 int64_t N, int64_t m0, int64_t rows, int64_t n0, int64_t n1,
                                 double* y) {
  if (cpu_wide_vectors()) {
    dot_block<double, 4>(x, w, b, K, N, m0, rows, n0, n1, y);
  } else {
    dot_block<double, 1>(x, w, b, K, N, m0, rows, n0, n1, y);
  }
}
inline void small_m(const float* x, const float* w, const float* b, int64_t K, int64_t N,
                    int64_t m0, int64_t rows, int64_t n0, int64_t n1, float* y) {
  small_m_f32(x, w, b, K, N, m0, rows, n0, n1, y);
}
inline void small_m(const double* x, const double* w, const double* b, int64_t K, int64_t N,
                    int64_t m0, int64_t rows, int64_t n0, int64_t n1, double* y) {
  small_m_f64(x, w, b, K, N, m0, rows, n0, n1, y);
}

template <typename T>
void linear_small_m(const T* x, const T* w, const T* b, int64_t M, int64_t N, int64_t K, int act,
                    T* y, T* z) {
  constexpr int64_t kCols = 64;  // columns per parallel work item
  // Rows per work item (a multiple of the tile's 4): a narrow layer on many rows
  // has one column chunk and still splits over threads.
  constexpr int64_t kRows = 64;
  const int64_t chunks = (N + kCols - 1) / kCols;
  const int64_t items = ((M + kRows - 1) / kRows) * chunks;
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for num_threads(cpu_threads()) schedule(static) if (M * N * K >= (1 << 18))
#endif
  for (int64_t i = 0; i < items; ++i) {
    const int64_t r0 = (i / chunks) * kRows, r1 = std::min(M, r0 + kRows);
    const int64_t n0 = (i % chunks) * kCols, n1 = std::min(N, n0 + kCols);
    for (int64_t m0 = r0; m0 < r1; m0 += 4)
      small_m(x, w, b, K, N, m0, std::min<int64_t>(4, r1 - m0), n0, n1, y);
    for (int64_t m = r0; m < r1; ++m) {
      T* row = y + m * N + n0;
      if (z) std::copy(row, row + (n1 - n0), z + m * N + n0);
      if (act != kActNone) activate_any(act, row, row, n1 - n0);
    }
  }
}

}  // namespace

bool cpu_wide_vectors() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool wide = __builtin_cpu_supports("avx512f");
  return wide;
#else
  return false;
#endif
}

bool linear_uses_dot_products(int64_t M, int64_t N, int64_t K) {
  if (M <= kSmallM) return true;
  if (!cpu_wide_vectors()) return false;
  // Narrow layers at any batch: the GEMM's 32-column panels are mostly padding.
  if (N < 16 || (N < 64 && K >= 128)) return true;
  return M <= 16 || (M <= 64 && K >= 128) || (M <= 128 && K >= 256) || (M <= 256 && K >= 512);
}

template <typename T>
void linear_forward_cpu(const T* x, const T* w, const T* b, int64_t M, int64_t N, int64_t K,
                        int act, T* y, T* z) {
  if (linear_uses_dot_products(M, N, K)) {
    linear_small_m(x, w, b, M, N, K, act, y, act == kActNone ? nullptr : z);
    return;
  }
  Gemm<T> g{M, N, K, x, K, 1, w, 1, K, y, N};
  g.epilogue = true;
  g.bias = b;
  g.act = act;
  g.Z = act == kActNone ? nullptr : z;
  gemm(g);
}

template <typename T>
void linear_backward_cpu(const T* gy, const T* z, const T* x, const T* w, int64_t M, int64_t N,
                         int64_t K, int act, T* gx, T* gw, T* gb) {
  const T* gp = gy;
  std::unique_ptr<T, FreeDeleter> buf;
  if (act != kActNone && M * N > 0) {
    buf = aligned_buffer<T>(M * N);
    T* g = buf.get();
    const int64_t total = M * N;
    constexpr int64_t kChunk = 4096;
    const int64_t chunks = (total + kChunk - 1) / kChunk;
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for num_threads(cpu_threads()) schedule(static) if (total >= (1 << 16))
#endif
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kChunk;
      activate_grad_any(act, gy + i0, z + i0, g + i0, std::min(kChunk, total - i0));
    }
    gp = g;
  }
  if (gx) {
    if (N == 0) {
      std::fill(gx, gx + M * K, T(0));
    } else {
      gemm(Gemm<T>{M, K, N, gp, N, 1, w, K, 1, gx, K});
    }
  }
  if (gw) {
    if (M == 0) {
      std::fill(gw, gw + N * K, T(0));
    } else {
      gemm(Gemm<T>{N, K, M, gp, 1, N, x, K, 1, gw, K});
    }
  }
  if (gb) {
    constexpr int64_t kChunk = 64;
    const int64_t chunks = (N + kChunk - 1) / kChunk;
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for num_threads(cpu_threads()) schedule(static) if (M * N >= (1 << 16))
#endif
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * kChunk, n1 = std::min(N, n0 + kChunk);
      T acc[kChunk] = {};
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < n1; ++n) acc[n - n0] += gp[m * N + n];
      for (int64_t n = n0; n < n1; ++n) gb[n] = acc[n - n0];
    }
  }
}

template <typename T>
void mlp_forward_cpu(const T* x, int64_t M, const int64_t* dims, int64_t layers,
                     const T* const* w, const T* const* b, const int* acts, T* out) {
  int64_t widest = 0;
  for (int64_t l = 1; l < layers; ++l) widest = std::max(widest, dims[l]);
  // Two ping-pong buffers for the hidden layers; the last layer writes `out`.
  auto scratch = aligned_buffer<T>(2 * M * std::max<int64_t>(widest, 1));
  const T* h = x;
  for (int64_t l = 0; l < layers; ++l) {
    T* dst = l + 1 == layers ? out : scratch.get() + (l % 2) * M * widest;
    linear_forward_cpu<T>(h, w[l], b[l], M, dims[l + 1], dims[l], acts[l], dst, nullptr);
    h = dst;
  }
}

template void mlp_forward_cpu<float>(const float*, int64_t, const int64_t*, int64_t,
                                     const float* const*, const float* const*, const int*,
                                     float*);
template void mlp_forward_cpu<double>(const double*, int64_t, const int64_t*, int64_t,
                                      const double* const*, const double* const*, const int*,
                                      double*);
template void linear_forward_cpu<float>(const float*, const float*, const float*, int64_t, int64_t,
                                        int64_t, int, float*, float*);
template void linear_forward_cpu<double>(const double*, const double*, const double*, int64_t,
                                         int64_t, int64_t, int, double*, double*);
template void linear_backward_cpu<float>(const float*, const float*, const float*, const float*,
                                         int64_t, int64_t, int64_t, int, float*, float*, float*);
template void linear_backward_cpu<double>(const double*, const double*, const double*,
                                          const double*, int64_t, int64_t, int64_t, int, double*,
                                          double*, double*);

}  // namespace conveyor
