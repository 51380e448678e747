// Function multiversioning for the CPU kernels: one build runs on any x86-64,
// and the loader picks the AVX-512, AVX2+FMA or baseline clone of each hot
// function. Only non-template functions can be cloned, so the kernels are
// always_inline templates wrapped by small cloned functions per dtype.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVEYOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONVEYOR_CLONES
#endif

#define CONVEYOR_INLINE __attribute__((always_inline)) inline

#include <cstdint>

namespace conveyor {

// 64-byte vectors (GCC/Clang vector extensions): one zmm with AVX-512, two
// ymm with AVX2, four xmm on the baseline; the compiler keeps the
// accumulators in registers, which plain arrays do not guarantee.
typedef float vf __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(64)));
template <typename T> struct Vec;
template <> struct Vec<float> { using type = vf; static constexpr int64_t kLanes = 16; };
template <> struct Vec<double> { using type = vd; static constexpr int64_t kLanes = 8; };
// Columns of a packed GEMM panel and of a register tile: two vectors.
template <typename T> constexpr int64_t kNR = 2 * Vec<T>::kLanes;

}  // namespace conveyor
