// Per-feature histogram update: the bin counter behind drift metrics.
//
// values  [rows, features] float32, row-major
// edges   [features, n_edges] float32, each row non-decreasing, n_edges >= 2
// counts  [features, n_edges + 2] int64, row-major, accumulated into
//
// Slot layout per feature (n_bins = n_edges - 1):
//   0              below range   (v < edges[0], -inf included)
//   1 .. n_bins    bin k covers [edges[k-1], edges[k]); the last bin is closed
//   n_edges        above range   (v > edges[n_edges-1], +inf included)
//   n_edges + 1    NaN
// This is numpy.searchsorted(edges, v, side="right") with the top edge moved
// into the last bin, so duplicate edges (discrete features) stay well defined.
#pragma once

#include <cstdint>
#include <string>

namespace conveyor {

inline int64_t histogram_slots(int64_t n_edges) { return n_edges + 2; }

void histogram_update_cpu(const float* values, int64_t rows, int64_t features,
                          const float* edges, int64_t n_edges, int64_t* counts);

#ifdef CONVEYOR_WITH_CUDA
// Device pointers; runs asynchronously on `stream` (a cudaStream_t, passed as
// an integer so this header needs no CUDA includes). Returns "" on success or
// the CUDA error string. lut_cells: 0 picks the kernel by size (a lookup
// table of cells per feature for large calls), -1 never uses the table, a
// power of two in [16, 4096] forces a table of that many cells where it fits
// in shared memory (tests and benchmarks). stages: 0 automatic, -1 loads
// values into registers, 2, 3, 4, 6 or 8 streams them through shared memory
// with that many asynchronous copies in flight per thread (the table kernel
// with 4-wide loads only; elsewhere, or where the ring does not fit, it has
// no effect).
std::string histogram_update_cuda(const float* values, int64_t rows, int64_t features,
                                  const float* edges, int64_t n_edges, int64_t* counts,
                                  int64_t lut_cells, int64_t stages, std::uintptr_t stream);
int cuda_device_count();
#endif

}  // namespace conveyor
