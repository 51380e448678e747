"""Embedding bag: per-bag sum or mean of embedding rows, as ``F.embedding_bag``.

Shapes: ``weight [V, D]``; ``indices [nnz]`` int64 (int32 is widened) with
``offsets [B]`` (start of each bag; bag ``b`` is ``indices[offsets[b]:offsets[b+1]]``,
the last one runs to ``nnz``; ``offsets[0] == 0``), or ``indices [B, L]`` with
``offsets=None`` (fixed-size bags); ``per_sample_weights`` like ``indices`` or
``None`` (mode ``"sum"`` only, as in torch). Output ``[B, D]`` in ``weight``'s
dtype; an empty bag gives zeros (both modes). Not supported (use torch):
``mode="max"``, ``padding_idx``, ``max_norm``, ``include_last_offset``.

Gradients: dense ``grad_weight [V, D]`` (torch's ``sparse=False``) and, when
given, ``grad_per_sample_weights``. The C++ path checks every index and the
offsets and raises ``ValueError``; the GPU paths do not check indices on the
device (that would cost a synchronisation): validate upstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conveyor.kernels import dispatch
from conveyor.kernels.second_order import reference_grads

MODES = {"sum": 0, "mean": 1}
_MODE_NAMES = {code: name for name, code in MODES.items()}


def embedding_bag_reference(
    indices: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor | None = None,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.nn.functional.embedding_bag``: the definition."""
    return F.embedding_bag(
        indices, weight, offsets, mode=mode, per_sample_weights=per_sample_weights
    )


def _np(t: torch.Tensor | None):
    return None if t is None else t.detach().numpy()


def _cpp_forward(weight, indices, offsets, psw, mode):
    from conveyor import _C

    # Pointers, not numpy arrays: embedding_bag() has checked what the numpy
    # binding would check again (~4 us a call); C++ checks index values.
    V, D = weight.shape
    out = weight.new_empty((offsets.shape[0], D))
    p = dispatch.ptr
    _C.embedding_bag_forward_ptr(
        p(weight), V, D, p(indices), indices.shape[0], p(offsets), offsets.shape[0], p(psw),
        mode, p(out), weight.dtype == torch.float64,
    )  # fmt: skip
    return out


def _cpp_backward(grad_out, weight, indices, offsets, psw, mode, need_psw):
    from conveyor import _C

    grad_weight = torch.empty_like(weight)
    grad_psw = torch.empty_like(psw) if need_psw else None
    _C.embedding_bag_backward(
        _np(grad_out), _np(weight), _np(indices), _np(offsets), _np(psw), mode,
        _np(grad_weight), _np(grad_psw),
    )  # fmt: skip
    return grad_weight, grad_psw


def _cuda_forward(weight, indices, offsets, psw, mode):
    from conveyor import _C

    V, D = weight.shape
    out = weight.new_empty((offsets.shape[0], D))
    p = dispatch.ptr
    with torch.cuda.device(weight.device):
        _C.embedding_bag_forward_cuda(
            p(weight), V, D, p(indices), indices.shape[0], p(offsets), offsets.shape[0], p(psw),
            mode, p(out), dispatch.cuda_dtype_code(weight.dtype), dispatch.cuda_stream(weight),
        )  # fmt: skip
    return out


def _cuda_backward(grad_out, weight, indices, offsets, psw, mode, need_psw):
    from conveyor import _C

    V, D = weight.shape
    # float32 accumulation target for the atomics, whatever the weight dtype.
    grad_weight = torch.zeros((V, D), dtype=torch.float32, device=weight.device)
    grad_psw = torch.empty_like(psw) if need_psw else None
    if grad_psw is not None and offsets.shape[0] == 0:
        grad_psw.zero_()  # no bags: the kernel returns at once, and no index has a gradient
    p = dispatch.ptr
    with torch.cuda.device(weight.device):
        _C.embedding_bag_backward_cuda(
            p(grad_out), p(weight), V, D, p(indices), indices.shape[0], p(offsets),
            offsets.shape[0], p(psw), mode, p(grad_weight), p(grad_psw),
            dispatch.cuda_dtype_code(weight.dtype), dispatch.cuda_stream(weight),
        )  # fmt: skip
    return grad_weight.to(weight.dtype), grad_psw


def _triton_forward(weight, indices, offsets, psw, mode):
    from conveyor.kernels.triton_kernels import embedding_bag

    return embedding_bag.forward(weight, indices, offsets, psw, mode)


def _triton_backward(grad_out, weight, indices, offsets, psw, mode, need_psw):
    from conveyor.kernels.triton_kernels import embedding_bag

    return embedding_bag.backward(grad_out, weight, indices, offsets, psw, mode, need_psw)


_BACKENDS = {
    "cpp": (_cpp_forward, _cpp_backward),
    "cuda": (_cuda_forward, _cuda_backward),
    "triton": (_triton_forward, _triton_backward),
}


class EmbeddingBagFunction(torch.autograd.Function):
    """Autograd wrapper around one compiled implementation (flat indices + offsets)."""

    @staticmethod
    def forward(ctx, weight, indices, offsets, psw, mode: int, impl: str):
        fwd, _ = _BACKENDS[impl]
        ctx.mode, ctx.impl = mode, impl
        ctx.save_for_backward(weight, indices, offsets, psw)
        return fwd(weight, indices, offsets, psw, mode)

    @staticmethod
    def backward(ctx, grad_out):
        weight, indices, offsets, psw = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: see kernels/second_order.py
            mode = _MODE_NAMES[ctx.mode]
            gw, _, _, gp = reference_grads(
                lambda w, i, o, p: embedding_bag_reference(i, w, o, mode, p),
                (weight, indices, offsets, psw),
                (ctx.needs_input_grad[0], False, False, ctx.needs_input_grad[3]),
                grad_out,
            )
            return gw, None, None, gp, None, None
        _, bwd = _BACKENDS[ctx.impl]
        need_psw = psw is not None and ctx.needs_input_grad[3]
        gw, gp = bwd(grad_out.contiguous(), weight, indices, offsets, psw, ctx.mode, need_psw)
        return (gw if ctx.needs_input_grad[0] else None), None, None, gp, None, None


def embedding_bag(
    indices: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor | None = None,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Per-bag ``mode`` pooling of ``weight`` rows; argument order as ``F.embedding_bag``.

    Args:
        indices: int64/int32 ``[nnz]`` with ``offsets``, or ``[B, L]`` without.
        weight: ``[V, D]`` table.
        offsets: int64/int32 ``[B]`` bag starts, or ``None`` for 2-D ``indices``.
        mode: ``"sum"`` or ``"mean"``.
        per_sample_weights: like ``indices`` in ``weight``'s dtype, or ``None``.
        impl: force an implementation; default ``dispatch.choose`` (env
            ``CONVEYOR_EMBEDDING_BAG_IMPL``).

    Returns:
        ``[B, D]``, differentiable in ``weight`` and ``per_sample_weights``.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {tuple(MODES)}, got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights: only supported with mode='sum' (as in torch)")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected [V, D], got {tuple(weight.shape)}")
    grad = dispatch.needs_grad(weight, per_sample_weights)
    work = indices.numel() * weight.shape[1]
    chosen = dispatch.choose(
        "embedding_bag",
        dispatch.device_type(weight),
        weight.dtype,
        impl,
        work=work,
        grad=grad,
        detail=(mode, weight.shape[1]),
    )
    if chosen == "reference":
        return embedding_bag_reference(indices, weight, offsets, mode, per_sample_weights)
    for name, t in (("indices", indices), ("offsets", offsets)):
        if t is not None and t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name}: expected int64 or int32, got {t.dtype}")
    if per_sample_weights is not None and per_sample_weights.shape != indices.shape:
        raise ValueError(
            f"per_sample_weights: expected the shape of indices {tuple(indices.shape)}, "
            f"got {tuple(per_sample_weights.shape)}"
        )
    if indices.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets: must be None when indices is 2-D [B, L]")
        bags, length = indices.shape
        offsets = torch.arange(0, bags * length, length, device=indices.device)
        indices = indices.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    elif indices.dim() != 1 or offsets is None or offsets.dim() != 1:
        raise ValueError("indices: expected [nnz] with 1-D offsets, or [B, L] without offsets")
    # is_cpu first: comparing two Tensor.device objects builds both (~0.25 us).
    on_cpu = weight.is_cpu and indices.is_cpu and offsets.is_cpu
    if not on_cpu and (indices.device != weight.device or offsets.device != weight.device):
        raise ValueError(f"indices, offsets: expected on weight's device ({weight.device})")
    if per_sample_weights is not None:
        if (
            per_sample_weights.shape != indices.shape
            or per_sample_weights.dtype != weight.dtype
            or per_sample_weights.device != weight.device
        ):
            raise ValueError(
                "per_sample_weights: expected the shape of indices, weight's dtype and device"
            )
        per_sample_weights = per_sample_weights.contiguous()
    # .to() costs ~0.9 us even when it returns its input: skip it for int64.
    if indices.dtype != torch.int64:
        indices = indices.to(torch.int64)
    if offsets.dtype != torch.int64:
        offsets = offsets.to(torch.int64)
    indices, offsets, weight = indices.contiguous(), offsets.contiguous(), weight.contiguous()
    if not grad:  # inference: no autograd node
        return _BACKENDS[chosen][0](weight, indices, offsets, per_sample_weights, MODES[mode])
    return EmbeddingBagFunction.apply(
        weight, indices, offsets, per_sample_weights, MODES[mode], chosen
    )
