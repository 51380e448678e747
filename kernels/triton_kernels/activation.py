"""Activations and their derivatives inside Triton kernels (float32 math).

Codes as ``conveyor.kernels.linear.ACTIVATIONS``: 0 none, 1 relu, 2 gelu (erf),
3 gelu (tanh approximation), 4 silu. ``tanh`` is written through ``exp(-2|u|)``
(no overflow) because ``tl`` has no tanh on every backend.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Globals read inside @triton.jit functions must be constexpr: the compiler
# refuses plain Python floats (the interpreter does not, so only a GPU run shows it).
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.jit
def _tanh(u):
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(u < 0.0, -t, t)


@triton.jit
def apply(z, ACT: tl.constexpr):
    """act(z) for a float32 block."""
    if ACT == 1:
        z = tl.where(z < 0.0, 0.0, z)  # NaN stays NaN, as torch.relu keeps it
    elif ACT == 2:
        z = 0.5 * z * (1.0 + tl.math.erf(z * _SQRT1_2))
    elif ACT == 3:
        z = 0.5 * z * (1.0 + _tanh((z + 0.044715 * z * z * z) * _SQRT_2_OVER_PI))
    elif ACT == 4:
        z = z * tl.sigmoid(z)
    return z


@triton.jit
def grad_times(gy, z, ACT: tl.constexpr):
    """``dy * act'(z)`` for float32 blocks; ReLU as torch's threshold_backward: 0 where
    z <= 0 whatever dy is (an infinite or NaN dy at a dead unit gives 0, not NaN)."""
    if ACT == 1:  # noqa: SIM108 (a constexpr branch, as in apply and grad)
        g = tl.where(z <= 0.0, 0.0, gy)
    else:
        g = gy * grad(z, ACT)
    return g


@triton.jit
def grad(z, ACT: tl.constexpr):
    """d act(z) / dz for a float32 block."""
    if ACT == 1:
        d = tl.where(z <= 0.0, 0.0, 1.0)  # NaN passes the gradient, as in torch
    elif ACT == 2:
        d = 0.5 * (1.0 + tl.math.erf(z * _SQRT1_2)) + z * _INV_SQRT_2PI * tl.exp(-0.5 * z * z)
    elif ACT == 3:
        t = _tanh((z + 0.044715 * z * z * z) * _SQRT_2_OVER_PI)
        d = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT_2_OVER_PI * (
            1.0 + 3.0 * 0.044715 * z * z
        )
    elif ACT == 4:
        s = tl.sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    else:
        d = tl.full(z.shape, 1.0, tl.float32)
    return d
