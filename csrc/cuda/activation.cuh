// The fused linear's activations and their derivatives on CUDA, in float32
// (codes in ops.h), shared by its GEMM epilogue and its gradient kernels.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace conveyor::cuda {

__device__ __forceinline__ float act_fwd(int act, float z) {
  switch (act) {
    case kActRelu: return z < 0.f ? 0.f : z;  // fmaxf(NaN, 0) is 0; torch.relu keeps NaN
    case kActGelu: return 0.5f * z * (1.f + erff(z * 0.70710678118654752f));
    case kActGeluTanh:
      return 0.5f * z * (1.f + tanhf(0.79788456080286536f * (z + 0.044715f * z * z * z)));
    case kActSilu: return z / (1.f + __expf(-z));
    default: return z;
  }
}

__device__ __forceinline__ float act_grad(int act, float z) {
  switch (act) {
    case kActRelu: return z <= 0.f ? 0.f : 1.f;  // NaN passes, as in torch
    case kActGelu:
      return 0.5f * (1.f + erff(z * 0.70710678118654752f)) +
             z * 0.39894228040143268f * __expf(-0.5f * z * z);
    case kActGeluTanh: {
      const float k = 0.79788456080286536f;
      const float t = tanhf(k * (z + 0.044715f * z * z * z));
      return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * k * (1.f + 3.f * 0.044715f * z * z);
    }
    case kActSilu: {
      const float s = 1.f / (1.f + __expf(-z));
      return s * (1.f + z * (1.f - s));
    }
    default: return 1.f;
  }
}

// dy * act'(z); ReLU as torch's threshold_backward: 0 at a dead unit whatever dy
// is (an infinite or NaN dy there gives 0, not NaN).
__device__ __forceinline__ float act_grad_times(int act, float dy, float z) {
  return act == kActRelu ? (z <= 0.f ? 0.f : dy) : dy * act_grad(act, z);
}

}  // namespace conveyor::cuda
