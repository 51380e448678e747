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
