// Activations of the fused linear op and their derivatives, for the CPU
// epilogues. GELU: kActGelu is the exact erf form (torch's default,
// approximate="none"); kActGeluTanh is approximate="tanh".
//
// float uses inline exp/erf/tanh that the compiler can vectorize (libm calls
// stay scalar and cost ~10 ns each, more than the GEMM per element at small
// K): exp is Cephes' expf (Cody-Waite reduction, degree-6 polynomial, about
// 1 ulp), erf is Abramowitz-Stegun 7.1.26 (absolute error <= 1.5e-7), tanh
// goes through exp. double uses libm, so gradcheck sees exact derivatives.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops.h"

namespace conveyor {

__attribute__((always_inline)) inline float act_exp(float x) {
  x = x < -87.3f ? -87.3f : x;  // 2^n stays a normal float (value selects vectorize;
  x = x > 88.3f ? 88.3f : x;    // std::min/max on references do not)
  // n = floor(x log2(e) + 1/2) through an integer conversion: vectorizes on
  // every ISA (std::floor is a libm call without SSE4.1).
  const float fx = x * 1.44269504088896341f + 0.5f;
  int32_t ni = static_cast<int32_t>(fx);
  ni -= static_cast<float>(ni) > fx ? 1 : 0;
  const float n = static_cast<float>(ni);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const float scale = __builtin_bit_cast(float, (ni + 127) << 23);
  return y * scale;
}
inline double act_exp(double x) { return std::exp(x); }

// exp with its limits past the clamps (0 below -87.3, inf above 88.3), for the
// formulas that need them: z / (1 + exp(-z)) and z * exp(-z * z / 2) must go to 0
// as |z| grows; with exp stuck at the clamps, SiLU(-1e38) was -0.45 and GELU'(1e38)
// 1.49. erf's exp(-a * a) does not (it is multiplied by ~1/a), so GELU's forward
// keeps the plain one (the two selects cost it ~5% at 512 x 256 -> 256).
__attribute__((always_inline)) inline float act_exp_limits(float x) {
  // Bit masks, not ?:: GCC 12 does not if-convert a select on the result of
  // act_exp, so the loops around it (SiLU, sigmoid, GELU's derivative) ran
  // scalar (~3-8 ns an element). A NaN compares false both times and stays NaN.
  const uint32_t tiny = 0u - static_cast<uint32_t>(x < -87.3f);
  const uint32_t huge = 0u - static_cast<uint32_t>(x > 88.3f);
  const uint32_t y = __builtin_bit_cast(uint32_t, act_exp(x)) & ~tiny;
  return __builtin_bit_cast(float, (y & ~huge) | (0x7f800000u & huge));
}
inline double act_exp_limits(double x) { return std::exp(x); }

__attribute__((always_inline)) inline float act_erf(float x) {
  const float a = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float v = 1.0f - p * t * act_exp(-a * a);
  return std::copysign(v, x);
}
inline double act_erf(double x) { return std::erf(x); }

__attribute__((always_inline)) inline float act_tanh(float u) {
  const float e = act_exp(-2.0f * std::fabs(u));
  return std::copysign((1.0f - e) / (1.0f + e), u);
}
inline double act_tanh(double u) { return std::tanh(u); }

template <typename T>
__attribute__((always_inline)) inline T activate(int act, T z) {
  switch (act) {
    case kActRelu:
      return z < T(0) ? T(0) : z;  // NaN stays NaN, as torch.relu keeps it
    case kActGelu:
      return T(0.5) * z * (T(1) + act_erf(z * T(0.70710678118654752440)));
    case kActGeluTanh: {
      const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
      return T(0.5) * z * (T(1) + act_tanh(inner));
    }
    case kActSilu:
      return z / (T(1) + act_exp_limits(-z));
    case kActSigmoid:
      return T(1) / (T(1) + act_exp_limits(-z));
    case kActTanh:
      return act_tanh(z);
    default:
      return z;
  }
}

// d act(z) / dz.
template <typename T>
__attribute__((always_inline)) inline T activate_grad(int act, T z) {
  switch (act) {
    case kActRelu:  // NaN passes the gradient, as torch's threshold_backward does
      return z <= T(0) ? T(0) : T(1);
    case kActGelu: {
      const T cdf = T(0.5) * (T(1) + act_erf(z * T(0.70710678118654752440)));
      const T pdf = T(0.39894228040143267794) * act_exp_limits(T(-0.5) * z * z);
      return cdf + z * pdf;
    }
    case kActGeluTanh: {
      const T k = T(0.79788456080286535588);
      const T t = act_tanh(k * (z + T(0.044715) * z * z * z));
      return T(0.5) * (T(1) + t) +
             T(0.5) * z * (T(1) - t * t) * k * (T(1) + T(3 * 0.044715) * z * z);
    }
    case kActSilu: {
      const T s = T(1) / (T(1) + act_exp_limits(-z));
      return s * (T(1) + z * (T(1) - s));
    }
    case kActSigmoid: {
      const T s = T(1) / (T(1) + act_exp_limits(-z));
      return s * (T(1) - s);
    }
    case kActTanh: {
      const T t = act_tanh(z);
      return T(1) - t * t;
    }
    default:
      return T(1);
  }
}

// out[i] = act(v[i]) and g[i] = gy[i] * act'(z[i]) over arrays, one loop per
// activation so each vectorizes (the switch is outside the element loop).
// In place (out == v) is allowed: each iteration reads and writes element i only.
//
// always_inline down to here: these are called from target_clones functions
// (simd.h), and a plain `inline` template is compiled once, for the baseline
// ISA, and called from every clone. That left the AVX-512 builds' epilogues on
// 4-wide SSE code: GELU cost ~2 ns an element, the GEMM's whole time again.
template <int ACT, typename T>
__attribute__((always_inline)) inline void activate_n(const T* v, T* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = activate<T>(ACT, v[i]);
}

template <int ACT, typename T>
__attribute__((always_inline)) inline void activate_grad_n(const T* gy, const T* z, T* g,
                                                           int64_t n) {
  if constexpr (ACT == kActRelu) {
    // As torch's threshold_backward: 0 at a dead unit whatever dy is (inf * 0 is NaN).
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) g[i] = z[i] <= T(0) ? T(0) : gy[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) g[i] = gy[i] * activate_grad<T>(ACT, z[i]);
  }
}

template <typename T>
__attribute__((always_inline)) inline void activate_array(int act, const T* v, T* out, int64_t n) {
  switch (act) {
    case kActRelu: activate_n<kActRelu>(v, out, n); break;
    case kActGelu: activate_n<kActGelu>(v, out, n); break;
    case kActGeluTanh: activate_n<kActGeluTanh>(v, out, n); break;
    case kActSilu: activate_n<kActSilu>(v, out, n); break;
    case kActSigmoid: activate_n<kActSigmoid>(v, out, n); break;
    case kActTanh: activate_n<kActTanh>(v, out, n); break;
    default: activate_n<kActNone>(v, out, n);
  }
}

template <typename T>
__attribute__((always_inline)) inline void activate_grad_array(int act, const T* gy, const T* z, T* g, int64_t n) {
  switch (act) {
    case kActRelu: activate_grad_n<kActRelu>(gy, z, g, n); break;
    case kActGelu: activate_grad_n<kActGelu>(gy, z, g, n); break;
    case kActGeluTanh: activate_grad_n<kActGeluTanh>(gy, z, g, n); break;
    case kActSilu: activate_grad_n<kActSilu>(gy, z, g, n); break;
    case kActSigmoid: activate_grad_n<kActSigmoid>(gy, z, g, n); break;
    case kActTanh: activate_grad_n<kActTanh>(gy, z, g, n); break;
    default: activate_grad_n<kActNone>(gy, z, g, n);
  }
}

}  // namespace conveyor
