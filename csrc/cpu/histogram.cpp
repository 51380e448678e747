#include "histogram.h"

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

// Counts one block of rows into `local` (features x slots).
inline void count_block(const float* values, int64_t r0, int64_t nrows, int64_t features,
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
    int64_t* c = local + f * slots;
    for (int64_t b = 0; b < nrows; ++b) {
      const float v = buf[b];
      int32_t i = idx[b];
      i = (v == top) ? static_cast<int32_t>(n_edges - 1) : i;
      i = (v != v) ? static_cast<int32_t>(n_edges + 1) : i;
      ++c[i];
    }
  }
}

}  // namespace

void histogram_update_cpu(const float* values, int64_t rows, int64_t features,
                          const float* edges, int64_t n_edges, int64_t* counts) {
  if (rows <= 0 || features <= 0) return;
  const int64_t slots = histogram_slots(n_edges);
  const int64_t cells = features * slots;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;

#ifdef CONVEYOR_WITH_OPENMP
  // Threads only pay off past a few blocks; each keeps private counts so the
  // hot loop has no atomics, then merges once.
  const bool parallel = rows * features >= (1 << 16);
#pragma omp parallel if (parallel)
  {
    std::vector<int64_t> local(cells, 0);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * kBlockRows;
      count_block(values, r0, std::min(kBlockRows, rows - r0), features, edges, n_edges,
                  local.data());
    }
#pragma omp critical(conveyor_histogram_merge)
    for (int64_t j = 0; j < cells; ++j) counts[j] += local[j];
  }
#else
  std::vector<int64_t> local(cells, 0);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * kBlockRows;
    count_block(values, r0, std::min(kBlockRows, rows - r0), features, edges, n_edges,
                local.data());
  }
  for (int64_t j = 0; j < cells; ++j) counts[j] += local[j];
#endif
}

}  // namespace conveyor
