"""Per-feature histogram update: the bin counter behind drift metrics.

For a float32 matrix ``values[rows, features]`` and per-feature bin edges
``edges[features, n_edges]`` (each row non-decreasing, ``n_edges >= 2``),
add the number of values falling in each slot into the int64 array
``counts[features, n_edges + 2]``. Slots per feature, with
``n_bins = n_edges - 1``:

=================  ==================================================
slot               holds
=================  ==================================================
``0``              below range: ``v < edges[0]`` (``-inf`` included)
``1 .. n_bins``    bin ``k`` covers ``[edges[k-1], edges[k])``; the last
                   bin is closed, so ``v == edges[-1]`` lands in it
``n_edges``        above range: ``v > edges[-1]`` (``+inf`` included)
``n_edges + 1``    NaN
=================  ==================================================

Implementations: ``reference`` (numpy, always available), ``cpp`` (C++ with
OpenMP in ``conveyor._C``), ``cuda`` (for torch CUDA tensors, when
``conveyor._C`` was built with CUDA) and ``triton`` (CUDA tensors; host arrays
only under ``TRITON_INTERPRET=1``, for tests). By default
``conveyor.kernels.dispatch`` picks ``cuda`` (else ``triton``) for CUDA tensors
and ``cpp`` otherwise; the ``impl`` argument or the ``CONVEYOR_HISTOGRAM_IMPL``
(or ``CONVEYOR_KERNEL_IMPL``) environment variable forces one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from conveyor.kernels import dispatch

IMPLS = ("reference", "cpp", "triton", "cuda")


def histogram_slots(n_edges: int) -> int:
    """Slots per feature for ``n_edges`` edges: below, the bins, above, NaN."""
    return n_edges + 2


def split_point_masses(edges: np.ndarray) -> np.ndarray:
    """Quantile ``edges`` (``[..., n_edges]``, non-decreasing) made strictly increasing in
    float32, the precision values are binned at: each edge that repeats the one before it
    (a point mass: 97% zeros put 20 of 21 quantile edges at 0) moves to the next float32
    above it. The point mass then has a bin of its own, ``[v, next float32)``, and values
    above it land in later bins: with the repeats, bin i = ``edges[i] <= v < edges[i+1]``
    held both the zeros and the ones of a rare flag, whose share could go from 3% to 100%
    without moving a bin. Returns float64; the last edge may exceed
    the data's maximum by a few float32 steps. Edges that do not repeat keep their value."""
    out = np.array(edges, dtype=np.float64, copy=True)
    up = np.float32(np.inf)
    prev = out[..., 0].astype(np.float32)
    for i in range(1, out.shape[-1]):
        cur = out[..., i].astype(np.float32)
        repeat = cur <= prev
        bumped = np.nextafter(prev, up)
        out[..., i] = np.where(repeat, bumped.astype(np.float64), out[..., i])
        prev = np.where(repeat, bumped, cur)
    return out


def binned_shares(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The share of ``values`` in each of the ``n_edges - 1`` bins of one row of ``edges``,
    binned as the histogram bins them: in float32, bin i = ``edges[i] <= v < edges[i+1]``,
    the last bin closed, values below or above the range folded into the first or last bin.
    The drift reference of a feature or a prediction, measured on a sample."""
    e = np.asarray(edges, np.float32)
    slot = np.searchsorted(e, np.asarray(values, np.float32), side="right")
    slot = np.clip(slot, 1, len(e) - 1) - 1
    return np.bincount(slot, minlength=len(e) - 1) / max(len(values), 1)


def histogram_update_reference(
    values: np.ndarray, edges: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Plain numpy implementation; the definition the other implementations are tested against."""
    n_edges = edges.shape[1]
    for f in range(values.shape[1]):
        v = values[:, f]
        slot = np.searchsorted(edges[f], v, side="right")
        slot[v == edges[f, -1]] = n_edges - 1
        slot[np.isnan(v)] = n_edges + 1
        counts[f] += np.bincount(slot, minlength=histogram_slots(n_edges))
    return counts


def _is_torch(x: Any) -> bool:
    return type(x).__module__.partition(".")[0] == "torch"


def _check_edges(edges: np.ndarray, features: int) -> None:
    if edges.ndim != 2 or edges.shape[0] != features:
        raise ValueError(
            f"edges: expected shape ({features}, n_edges), one row per feature; got {edges.shape}"
        )
    if edges.shape[1] < 2:
        raise ValueError(f"edges: need at least 2 edges per feature, got {edges.shape[1]}")
    if np.isnan(edges).any():
        raise ValueError("edges: must not contain NaN")
    if (np.diff(edges, axis=1) < 0).any():
        bad = int(np.nonzero((np.diff(edges, axis=1) < 0).any(axis=1))[0][0])
        raise ValueError(f"edges: row {bad} is not sorted in non-decreasing order")


def _resolve_impl(impl: str | None, on_cuda: bool) -> str:
    if impl is None:  # environment, then the defaults (see conveyor.kernels.dispatch)
        return dispatch.choose("histogram", "cuda" if on_cuda else "cpu", torch.float32)
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if not dispatch.available("histogram", impl, "cuda" if on_cuda else "cpu", torch.float32):
        where = "CUDA tensors" if on_cuda else "host arrays"
        raise ValueError(f"impl {impl!r} cannot run on {where}")
    return impl


def _cpu_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def histogram_update(
    values: Any,
    edges: Any,
    counts: Any | None = None,
    *,
    impl: str | None = None,
    check_edges: bool = True,
) -> Any:
    """Add per-feature slot counts of ``values`` into ``counts`` and return ``counts``.

    Args:
        values: float32 ``[rows, features]``: a numpy array, a CPU torch tensor
            (viewed without copying) or a CUDA torch tensor. Other float dtypes
            and non-contiguous layouts are converted to contiguous float32 (a copy).
        edges: ``[features, n_edges]`` sorted edges per feature (converted to float32,
            the precision values are compared at), on the same device as ``values``.
        counts: int64 ``[features, n_edges + 2]`` to accumulate into, on the same
            device; a zeroed one is allocated when ``None``.
        impl: ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``; default: chosen by device,
            overridable with the ``CONVEYOR_HISTOGRAM_IMPL`` environment variable.
        check_edges: verify that edges are sorted and free of NaN (default ``True``).
            Callers on a hot path that validated their edges once pass ``False``;
            for CUDA tensors the check costs a device-to-host copy.

    Returns:
        ``counts``, updated in place.
    """
    if _is_torch(values) and values.is_cuda:
        return _histogram_update_cuda(values, edges, counts, _resolve_impl(impl, True), check_edges)

    if counts is not None and _is_torch(counts):
        # A CPU tensor of counts is updated through its numpy view, whatever values are.
        if counts.device.type != "cpu":
            raise ValueError(f"counts: on {counts.device}, values are not: use one device")
        histogram_update(values, edges, counts.numpy(), impl=impl, check_edges=check_edges)
        return counts
    if _is_torch(values):
        # numpy has no bfloat16: such tensors (values or edges) go over as float32.
        values = _cpu_numpy(values)
        edges = _cpu_numpy(edges) if _is_torch(edges) else edges
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"values: expected 2 dimensions [rows, features], got {values.ndim}")
    edges = np.ascontiguousarray(edges, dtype=np.float32)
    if check_edges:
        _check_edges(edges, values.shape[1])
    elif edges.ndim != 2 or edges.shape[0] != values.shape[1]:
        raise ValueError(f"edges: expected ({values.shape[1]}, n_edges), got {edges.shape}")
    shape = (values.shape[1], histogram_slots(edges.shape[1]))
    if counts is None:
        counts = np.zeros(shape, dtype=np.int64)
    elif not isinstance(counts, np.ndarray) or counts.dtype != np.int64 or counts.shape != shape:
        got = getattr(counts, "dtype", type(counts).__name__), getattr(counts, "shape", None)
        raise ValueError(f"counts: expected int64 array of shape {shape}, got {got}")

    chosen = _resolve_impl(impl, False)
    if chosen == "reference":
        return histogram_update_reference(values, edges, counts)
    if not counts.flags.c_contiguous:
        # The compiled paths add into contiguous memory: count into a copy, write it back.
        work = np.ascontiguousarray(counts)
        histogram_update(values, edges, work, impl=chosen, check_edges=False)
        counts[...] = work
        return counts
    if chosen == "triton":  # the interpreter, on zero-copy torch views of the arrays
        from conveyor.kernels.triton_kernels import histogram as triton_histogram

        v, e, c = (torch.from_numpy(a) for a in (values, edges, counts))
        triton_histogram.histogram_update(v, e, c)
        return counts
    from conveyor import _C

    _C.histogram_update(values, edges, counts)
    return counts


def _histogram_update_cuda(
    values: Any,
    edges: Any,
    counts: Any | None,
    impl: str,
    check_edges: bool,
    lut_cells: int = 0,
    stages: int = 0,
) -> Any:
    """The CUDA-tensor path of ``histogram_update``. CUDA kernel only, for tests and
    benchmarks: ``lut_cells`` 0 picks the kernel by size, -1 never uses the lookup
    table, a power of two in [16, 4096] forces a table of that many cells;
    ``stages`` 0 automatic, -1 loads values into registers, 2, 3, 4, 6 or 8 streams
    them through shared memory with that many asynchronous copies in flight per
    thread (the table kernel with 4-wide loads)."""
    from conveyor import _C

    if impl == "reference":
        raise ValueError("impl 'reference' runs on host arrays; copy CUDA tensors to the host")
    if values.dim() != 2:
        raise ValueError(f"values: expected 2 dimensions [rows, features], got {values.dim()}")
    values = values.contiguous().float()
    edges = torch.as_tensor(edges, device=values.device).contiguous().float()
    if check_edges:
        _check_edges(edges.cpu().numpy(), values.shape[1])
    elif edges.dim() != 2 or edges.shape[0] != values.shape[1] or edges.shape[1] < 2:
        raise ValueError(f"edges: expected ({values.shape[1]}, n_edges >= 2), got {edges.shape}")
    shape = (values.shape[1], histogram_slots(edges.shape[1]))
    if counts is None:
        counts = torch.zeros(shape, dtype=torch.int64, device=values.device)
    elif (
        counts.dtype != torch.int64
        or tuple(counts.shape) != shape
        or counts.device != values.device
        or not counts.is_contiguous()
    ):
        raise ValueError(
            f"counts: expected contiguous int64 tensor of shape {shape} on {values.device}"
        )
    if impl == "triton":
        from conveyor.kernels.triton_kernels import histogram as triton_histogram

        triton_histogram.histogram_update(values, edges, counts)
        return counts
    stream = torch.cuda.current_stream(values.device).cuda_stream
    with torch.cuda.device(values.device):
        _C.histogram_update_cuda(
            values.data_ptr(),
            values.shape[0],
            values.shape[1],
            edges.data_ptr(),
            edges.shape[1],
            counts.data_ptr(),
            stream,
            lut_cells,
            stages,
        )
    return counts
