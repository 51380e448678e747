// Activations of the fused linear op and their derivatives, scalar form for
// the CPU epilogues. GELU: kActGelu is the exact erf form (torch's default,
// approximate="none"); kActGeluTanh is approximate="tanh".
#pragma once

#include <cmath>

#include "ops.h"

namespace conveyor {

template <typename T>
inline T activate(int act, T z) {
  switch (act) {
    case kActRelu:
      return z > T(0) ? z : T(0);
    case kActGelu:
      return T(0.5) * z * (T(1) + std::erf(z * T(0.70710678118654752440)));
    case kActGeluTanh: {
      const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
      return T(0.5) * z * (T(1) + std::tanh(inner));
    }
    case kActSilu:
      return z / (T(1) + std::exp(-z));
    default:
      return z;
  }
}

// d act(z) / dz.
template <typename T>
inline T activate_grad(int act, T z) {
  switch (act) {
    case kActRelu:
      return z > T(0) ? T(1) : T(0);
    case kActGelu: {
      const T cdf = T(0.5) * (T(1) + std::erf(z * T(0.70710678118654752440)));
      const T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * z * z);
      return cdf + z * pdf;
    }
    case kActGeluTanh: {
      const T k = T(0.79788456080286535588);
      const T t = std::tanh(k * (z + T(0.044715) * z * z * z));
      return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * k * (T(1) + T(3 * 0.044715) * z * z);
    }
    case kActSilu: {
      const T s = T(1) / (T(1) + std::exp(-z));
      return s * (T(1) + z * (T(1) - s));
    }
    default:
      return T(1);
  }
}

}  // namespace conveyor
