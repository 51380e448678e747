// Threads for the CPU ops: one count for the whole process.
//
// OpenMP keeps its thread-count setting per calling thread: omp_set_num_threads
// changes only the caller's, and every other thread keeps OMP_NUM_THREADS (or
// all cores). A limit set on the main thread (set_num_threads, torch's) did not
// reach the serving and executor threads that call the ops, so each started a
// team as large as the machine. Every parallel region names this count instead.
#pragma once

#include <atomic>

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif

namespace conveyor {

// The setting, first read as OpenMP's default (OMP_NUM_THREADS, else the cores).
inline std::atomic<int>& cpu_thread_setting() {
#ifdef CONVEYOR_WITH_OPENMP
  static std::atomic<int> threads{omp_get_max_threads()};
#else
  static std::atomic<int> threads{1};
#endif
  return threads;
}

inline int cpu_threads() { return cpu_thread_setting().load(std::memory_order_relaxed); }

inline void set_cpu_threads(int n) { cpu_thread_setting().store(n, std::memory_order_relaxed); }

}  // namespace conveyor
