#include "histogram.h"
#include "cpu/simd.h"
#include "cpu/threads.h"

#include <algorithm>
#include <vector>

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif

namespace conveyor {
namespace {

// Rows handled per feature pass. 256 rows x 32 features x 4 bytes stays in
// L1/L2 while each feature column of the block is gathered.
constexpr int64_t kBlockRows = 256;
constexpr int64_t kLanes = 4;

// Counts one block of rows into `local` (features x kLanes x slots). Built
// for AVX-512, AVX2 and the baseline ISA; the loader picks at run time.
CONVEYOR_CLONES void count_block(const float* values, int64_t r0, int64_t nrows, int64_t features,
                        const float* edges, int64_t n_edges, int64_t* local) {
  const int64_t slots = histogram_slots(n_edges);
  float buf[kBlockRows];
  int32_t idx[kBlockRows];
  for (int64_t f = 0; f < features; ++f) {
    const float* e = edges + f * n_edges;
    for (int64_t b = 0; b < nrows; ++b) buf[b] = values[(r0 + b) * features + f];
    for (int64_t b = 0; b < nrows; ++b) idx[b] = 0;
    // Counting edges <= v instead of a binary search: branch-free, and the
    // inner loop over rows vectorizes.
    for (int64_t k = 0; k < n_edges; ++k) {
      const float ek = e[k];
      for (int64_t b = 0; b < nrows; ++b) idx[b] += static_cast<int32_t>(buf[b] >= ek);
    }
    const float top = e[n_edges - 1];
    for (int64_t b = 0; b < nrows; ++b) {
      const float v = buf[b];
      int32_t i = idx[b];
      i = (v == top) ? static_cast<int32_t>(n_edges - 1) : i;
      i = (v != v) ? static_cast<int32_t>(n_edges + 1) : i;
      idx[b] = i;
    }
    // Neighbouring values often share a bin; spreading increments over
    // kLanes copies breaks the store-to-load dependency between them.
    int64_t* c = local + f * slots * kLanes;
    int64_t b = 0;
    for (; b + kLanes <= nrows; b += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) ++c[l * slots + idx[b + l]];
    }
    for (; b < nrows; ++b) ++c[idx[b]];
  }
}

void merge_lanes(const int64_t* local, int64_t features, int64_t slots, int64_t* counts) {
  for (int64_t f = 0; f < features; ++f)
    for (int64_t l = 0; l < kLanes; ++l)
      for (int64_t s = 0; s < slots; ++s) counts[f * slots + s] += local[(f * kLanes + l) * slots + s];
}

}  // namespace

void histogram_update_cpu(const float* values, int64_t rows, int64_t features,
                          const float* edges, int64_t n_edges, int64_t* counts) {
  if (rows <= 0 || features <= 0) return;
  const int64_t slots = histogram_slots(n_edges);
  const int64_t cells = features * slots;
  const int64_t lane_cells = cells * kLanes;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;

#ifdef CONVEYOR_WITH_OPENMP
  // Threads only pay off past a few blocks; each keeps private counts so the
  // hot loop has no atomics, then merges once.
  const bool parallel = rows * features >= (1 << 16);
#pragma omp parallel num_threads(cpu_threads()) if (parallel)
  {
    std::vector<int64_t> local(lane_cells, 0);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * kBlockRows;
      count_block(values, r0, std::min(kBlockRows, rows - r0), features, edges, n_edges,
                  local.data());
    }
#pragma omp critical(conveyor_histogram_merge)
    merge_lanes(local.data(), features, slots, counts);
  }
#else
  std::vector<int64_t> local(lane_cells, 0);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * kBlockRows;
    count_block(values, r0, std::min(kBlockRows, rows - r0), features, edges, n_edges,
                local.data());
  }
  merge_lanes(local.data(), features, slots, counts);
#endif
}

}  // namespace conveyor
