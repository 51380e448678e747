"""Row-wise layer norm, as ``torch.nn.functional.layer_norm``.

Shapes: ``x [..., *normalized_shape]`` normalised over the trailing
``normalized_shape`` (flattened to ``N`` elements per row); ``weight``, ``bias``
of ``normalized_shape`` or ``None``; ``eps`` added to the biased variance
(default ``1e-5``). dtypes: float32 everywhere; float64 on the reference and
C++ paths; float16/bfloat16 on the GPU paths (statistics in float32).
Forward and backward (``dx``, ``dweight``, ``dbias``) as one autograd Function
per implementation; the forward saves the per-row ``mean`` and ``rstd``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from conveyor.kernels import dispatch
from conveyor.kernels.second_order import reference_grads


def layer_norm_reference(
    x: torch.Tensor,
    normalized_shape: tuple[int, ...] | list[int] | int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``torch.nn.functional.layer_norm``: the definition."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return F.layer_norm(x, tuple(normalized_shape), weight, bias, eps)


def _np(t: torch.Tensor | None):
    return None if t is None else t.detach().numpy()


def _cpp_forward(x, weight, bias, eps, keep_stats=True):
    from conveyor import _C

    # Pointers, not numpy arrays: layer_norm() has checked shapes, dtypes,
    # devices and contiguity, which the numpy binding would check again (with
    # the conversions, most of a small call's time).
    M, N = x.shape
    y = torch.empty_like(x)
    mean = x.new_empty(M) if keep_stats else None
    rstd = x.new_empty(M) if keep_stats else None
    p = dispatch.ptr
    _C.layer_norm_forward_ptr(
        p(x), p(weight), p(bias), M, N, eps, p(y), p(mean), p(rstd), x.dtype == torch.float64
    )
    return y, mean, rstd


def _cpp_backward(gy, x, weight, mean, rstd, need):
    from conveyor import _C

    gx = torch.empty_like(x) if need[0] else None
    gw = x.new_empty(x.shape[1]) if need[1] else None
    gb = x.new_empty(x.shape[1]) if need[2] else None
    _C.layer_norm_backward(
        _np(gy), _np(x), _np(weight), _np(mean), _np(rstd), _np(gx), _np(gw), _np(gb)
    )
    return gx, gw, gb


def _cuda_forward(x, weight, bias, eps, keep_stats=True):  # the kernel always writes them
    from conveyor import _C

    M, N = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    p = dispatch.ptr
    with torch.cuda.device(x.device):
        _C.layer_norm_forward_cuda(
            p(x), p(weight), p(bias), M, N, eps, p(y), p(mean), p(rstd),
            dispatch.cuda_dtype_code(x.dtype), dispatch.cuda_stream(x),
        )  # fmt: skip
    return y, mean, rstd


def _cuda_backward(gy, x, weight, mean, rstd, need):
    from conveyor import _C

    M, N = x.shape
    gx = torch.empty_like(x) if need[0] else None
    f32 = {"dtype": torch.float32, "device": x.device}
    gw = torch.zeros(N, **f32) if need[1] else None
    gb = torch.zeros(N, **f32) if need[2] else None
    p = dispatch.ptr
    with torch.cuda.device(x.device):
        _C.layer_norm_backward_cuda(
            p(gy), p(x), p(weight), p(mean), p(rstd), M, N, p(gx), p(gw), p(gb),
            dispatch.cuda_dtype_code(x.dtype), dispatch.cuda_stream(x),
        )  # fmt: skip

    def cast(t):
        return None if t is None else t.to(x.dtype)

    return gx, cast(gw), cast(gb)


def _triton_forward(x, weight, bias, eps, keep_stats=True):  # the kernel always writes them
    from conveyor.kernels.triton_kernels import layer_norm

    return layer_norm.forward(x, weight, bias, eps)


def _triton_backward(gy, x, weight, mean, rstd, need):
    from conveyor.kernels.triton_kernels import layer_norm

    return layer_norm.backward(gy, x, weight, mean, rstd, need)


_BACKENDS = {
    "cpp": (_cpp_forward, _cpp_backward),
    "cuda": (_cuda_forward, _cuda_backward),
    "triton": (_triton_forward, _triton_backward),
}


class LayerNormFunction(torch.autograd.Function):
    """Autograd wrapper around one compiled implementation (2-D ``x [M, N]``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, impl: str):
        fwd, _ = _BACKENDS[impl]
        y, mean, rstd = fwd(x, weight, bias, eps)
        ctx.impl, ctx.eps = impl, eps
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: see kernels/second_order.py
            gx, gw, gb = reference_grads(
                lambda x, w, b: layer_norm_reference(x, x.shape[-1], w, b, ctx.eps),
                (x, weight, bias),
                ctx.needs_input_grad[:3],
                gy,
            )
            return gx, gw, gb, None, None
        _, bwd = _BACKENDS[ctx.impl]
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        gx, gw, gb = bwd(gy.contiguous(), x, weight, mean, rstd, need)
        return gx, gw, gb, None, None


def layer_norm(
    x: torch.Tensor,
    normalized_shape: tuple[int, ...] | list[int] | int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Layer norm over the trailing ``normalized_shape``; arguments as ``F.layer_norm``.

    ``impl`` forces an implementation; default ``dispatch.choose`` (env
    ``CONVEYOR_LAYER_NORM_IMPL``). Returns a tensor shaped like ``x``.
    """
    if not eps >= 0:  # NaN too; checked here for every implementation (the C++ one did)
        raise ValueError(f"eps: must be a number >= 0, got {eps!r}")
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or tuple(x.shape[-k:]) != normalized_shape:
        raise ValueError(f"normalized_shape {normalized_shape} is not the end of {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != normalized_shape:
            raise ValueError(f"{name}: expected shape {normalized_shape}, got {tuple(t.shape)}")
    grad = dispatch.needs_grad(x, weight, bias)
    n = math.prod(normalized_shape)
    chosen = dispatch.choose(
        "layer_norm", dispatch.device_type(x), x.dtype, impl, work=x.numel(), grad=grad,
        detail=(n,),
    )  # fmt: skip
    if chosen == "reference":
        return layer_norm_reference(x, normalized_shape, weight, bias, eps)
    # The compiled paths take raw pointers: weight and bias must match x.
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name}: expected x's dtype and device ({x.dtype}, {x.device})")
    if n == 0:  # nothing to normalise (reshape(-1, 0) cannot infer the rows)
        return layer_norm_reference(x, normalized_shape, weight, bias, eps)
    x2 = x.reshape(-1, n).contiguous()
    w = None if weight is None else weight.reshape(n).contiguous()
    b = None if bias is None else bias.reshape(n).contiguous()
    if not grad:  # inference: no autograd node
        return _BACKENDS[chosen][0](x2, w, b, float(eps), False)[0].reshape(x.shape)
    return LayerNormFunction.apply(x2, w, b, float(eps), chosen).reshape(x.shape)
