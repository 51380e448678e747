"""Whole-MLP inference in one call: the small-batch serving path.

``fused_mlp(x, layers)`` computes ``h = act_L(... act_1(x @ W_1.T + b_1) ...)``
for ``layers = [(W_l [N_l, K_l], b_l [N_l] or None, activation_l), ...]``
(activations as ``conveyor.kernels.ACTIVATIONS``, plus ``sigmoid`` and ``tanh``
for the C++ paths: ``MLP_ACTIVATIONS``), ``x [..., K_1]``. The ``cpp``
implementation runs every layer inside one call to ``conveyor._C`` (intermediate
activations in one scratch buffer), which at serving batch sizes removes most
of the per-op dispatch cost of eager torch. Inference only: when autograd
needs the graph, or on devices without an implementation, it runs the layers
as ``fused_linear`` calls (the dispatcher's choice per layer).

:class:`PackedMLP` is the serving form: the weights are copied once into the
kernel's panel layout, so a call packs nothing (2.0-3.4x TorchScript's forward
of the same ``nn.Sequential`` at batch 1-512 on this machine, see
benchmarks/README.md). :class:`FusedMLP` uses it for inference, and the engine
for models that ask for the ``conveyor_mlp`` accelerator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from conveyor.kernels import dispatch
from conveyor.kernels.linear import (
    ACTIVATIONS,
    FusedLinear,
    PackCache,
    activation_reference,
    autocast_dtype,
    fused_linear,
    linear_reference,
)

Layer = tuple[torch.Tensor, torch.Tensor | None, str]

# The fused linear's activations, plus the output activations only the C++ MLP paths take.
MLP_ACTIVATIONS = {**ACTIVATIONS, "sigmoid": 5, "tanh": 6}


def mlp_reference(x: torch.Tensor, layers: Sequence[Layer]) -> torch.Tensor:
    """``nn.Linear`` + activation per layer in torch eager: the definition."""
    for w, b, act in layers:
        x = linear_reference(x, w, b, act)
    return x


def fused_mlp(x: torch.Tensor, layers: Sequence[Layer], *, impl: str | None = None) -> torch.Tensor:
    """Run the MLP ``layers`` on ``x [..., K]``; returns ``[..., N_last]``.

    ``impl``: ``"cpp"`` (one call, inference only), ``"reference"``, or ``None``
    for ``dispatch.choose`` (env ``CONVEYOR_MLP_IMPL``).
    """
    if not layers:
        return x
    tensors = [x] + [t for w, b, _ in layers for t in (w, b)]
    grad = dispatch.needs_grad(*tensors)
    lead = x.shape[:-1]
    work = math.prod(lead) * sum(w.shape[0] * w.shape[1] for w, _, _ in layers)
    chosen = dispatch.choose("mlp", dispatch.device_type(x), x.dtype, impl, work=work, grad=grad)
    # Under autocast, layer by layer in autocast's dtype, as nn.Linear (the packed C++
    # MLP would answer float32).
    if chosen == "reference" or grad or autocast_dtype(x) is not None:
        if chosen == "reference":
            return mlp_reference(x, layers)
        for w, b, act in layers:  # autograd needs the graph: one fused_linear per layer
            if act in ACTIVATIONS:
                x = fused_linear(x, w, b, act)
            else:  # an output activation the fused linear does not take (sigmoid, tanh)
                x = activation_reference(fused_linear(x, w, b, "none"), act)
        return x
    return _run_cpp(x, _pack(layers))


def _pack(layers: Sequence[Layer]) -> list[tuple]:
    """The ``(w, b, act_code)`` numpy views ``conveyor._C.mlp_forward`` takes."""
    packed = []
    for w, b, act in layers:
        if act not in MLP_ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {tuple(MLP_ACTIVATIONS)}, got {act!r}"
                + (' (no activation is "none")' if act is None else "")
            )
        bias = None if b is None else b.detach().contiguous().numpy()
        packed.append((w.detach().contiguous().numpy(), bias, MLP_ACTIVATIONS[act]))
    return packed


def _plain(module: nn.Module, kind: type[nn.Module]) -> bool:
    """Whether ``module`` is a ``kind`` computing what ``kind`` does: a subclass that
    overrides ``forward`` (a scaled ReLU, a residual Sequential) is something else."""
    return isinstance(module, kind) and type(module).forward is kind.forward


def _module_activation(module: nn.Module) -> str | None:
    """The :data:`MLP_ACTIVATIONS` name of an activation module, or None."""
    if _plain(module, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    kinds = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
    return next((name for kind, name in kinds.items() if _plain(module, kind)), None)


# One module of a Sequential as :func:`fold_layers` sees it: a Linear's ``(weight, bias)``,
# an activation's :data:`MLP_ACTIVATIONS` name, or None for anything else.
ModulePart = tuple[torch.Tensor, "torch.Tensor | None"] | str | None


def fold_layers(parts: Iterable[tuple[str, str, ModulePart]]) -> list[Layer]:
    """``[(W, b, activation), ...]`` from a Sequential's modules in order, each given as
    ``(path, type name, part)``: every Linear followed by at most one activation. Shared
    by eager modules (:func:`sequential_layers`) and TorchScript ones (the serving
    accelerator). Raises ``ValueError`` naming the first module that does not fit."""
    layers: list[list] = []
    for path, name, part in parts:
        if isinstance(part, tuple):
            layers.append([part[0], part[1], "none"])
            continue
        if part is None:
            raise ValueError(f"module {path} ({name}) is not a Linear or a supported activation")
        if not layers or layers[-1][2] != "none":
            raise ValueError(f"module {path} ({name}): an activation must directly follow a Linear")
        layers[-1][2] = part
    return [(w, b, act) for w, b, act in layers]


def sequential_layers(module: nn.Sequential) -> list[Layer]:
    """``[(W, b, activation), ...]`` of an ``nn.Sequential`` of ``nn.Linear`` layers, each
    followed by at most one activation module (ReLU, GELU, SiLU, Sigmoid, Tanh). Nested
    Sequentials are flattened; Dropout and Identity, identities at inference, are skipped.
    Raises ``ValueError`` naming the first module that does not fit."""

    def parts() -> Iterator[tuple[str, str, ModulePart]]:
        # remove_duplicate=False: one ReLU instance used after two Linears is two activations.
        for path, child in module.named_modules(remove_duplicate=False):
            if any(_plain(child, kind) for kind in (nn.Sequential, nn.Dropout, nn.Identity)):
                continue
            linear = type(child) is nn.Linear
            part = (child.weight, child.bias) if linear else _module_activation(child)
            yield path, type(child).__name__, part

    return fold_layers(parts())


def _run_cpp(x: torch.Tensor, packed: list[tuple]) -> torch.Tensor:
    from conveyor import _C

    lead = x.shape[:-1]
    if x.dim() != 2 or not x.is_contiguous():
        x = x.reshape(math.prod(lead), x.shape[-1]).contiguous()
    # numpy for the output buffer: at serving sizes each torch allocation and
    # view costs about as much as the MLP itself.
    out = np.empty((x.shape[0], packed[-1][0].shape[0]), dtype=packed[-1][0].dtype)
    _C.mlp_forward(x.detach().numpy(), packed, out)
    return torch.from_numpy(out).reshape(*lead, out.shape[-1])


class PackedMLP:
    """An MLP's weights packed once for repeated CPU inference (the serving path).

    Args:
        layers: ``[(W [N, K], b [N] or None, activation), ...]``, CPU tensors, all float32
            or all float64; ``activation`` is a name from ``MLP_ACTIVATIONS`` (``"none"``,
            ``"relu"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``, ``"sigmoid"``, ``"tanh"``;
            no activation is ``"none"``, not None). Or an ``nn.Sequential`` of Linear and
            activation modules (:func:`sequential_layers`). The values are copied: later
            changes to the tensors are not seen.

    Call it with a CPU tensor ``x [..., K_0]`` of the weights' dtype for ``[..., N_last]``,
    or use :meth:`run` with numpy arrays. Thread-safe: several threads may call one
    instance at once; each call releases the GIL while it computes.
    """

    def __init__(self, layers: Sequence[Layer] | nn.Sequential) -> None:
        from conveyor import _C

        if isinstance(layers, nn.Sequential):
            layers = sequential_layers(layers)
        if not layers:
            raise ValueError("layers: need at least one (w, b, activation)")
        for i, (w, b, _) in enumerate(layers):
            for name, t in (("w", w), ("b", b)):
                if t is not None and t.device.type != "cpu":
                    raise ValueError(f"layer {i} {name}: PackedMLP runs on the CPU, got {t.device}")
        self._c = _C.PackedMLP(_pack(layers))
        self.dims: tuple[int, ...] = tuple(self._c.dims)
        self.dtype = np.dtype(np.float64 if self._c.f64 else np.float32)
        self._torch_dtype = torch.float64 if self._c.f64 else torch.float32

    @property
    def in_features(self) -> int:
        return self.dims[0]

    @property
    def out_features(self) -> int:
        return self.dims[-1]

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``x [M, K_0]`` (numpy, the packed dtype) -> ``[M, N_last]``, into ``out`` if given.

        ``x`` that is not C-contiguous is copied first; ``out`` must be C-contiguous. An
        ``out`` that overlaps ``x`` (``out=x``) is fine: ``x`` is copied first then, as
        the layers read it while ``out`` is written."""
        if x.ndim != 2 or x.shape[1] != self.dims[0]:
            raise ValueError(f"x: expected shape (M, {self.dims[0]}), got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected dtype {self.dtype}, got {x.dtype}")
        x = np.ascontiguousarray(x)
        shape = (x.shape[0], self.dims[-1])
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif (
            out.shape != shape
            or out.dtype != self.dtype
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                f"out: expected a writeable C-contiguous {self.dtype} array of shape {shape}"
            )
        if np.shares_memory(x, out):
            x = x.copy()
        # Pointers: everything the numpy binding would check is checked above.
        self._c.forward_ptr(x.ctypes.data, x.shape[0], out.ctypes.data)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Torch tensors and data pointers throughout: at serving sizes each numpy
        # conversion and check costs about as much as a small layer.
        if x.device.type != "cpu":
            raise ValueError(f"x: PackedMLP runs on the CPU, got {x.device}")
        if x.dtype != self._torch_dtype:
            raise TypeError(f"x: expected dtype {self.dtype}, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.dims[0]:
            raise ValueError(f"x: expected shape (..., {self.dims[0]}), got {tuple(x.shape)}")
        # math.prod, not -1: reshape cannot infer a dimension beside a 0 (in_features 0).
        flat = x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), self.dims[0])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        out = torch.empty((flat.shape[0], self.dims[-1]), dtype=x.dtype)
        self._c.forward_ptr(flat.data_ptr(), flat.shape[0], out.data_ptr())
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.dims[-1])


class FusedMLP(nn.Module):
    """A stack of ``FusedLinear`` layers; inference runs them in one call.

    Args:
        dims: ``[in, hidden..., out]`` feature sizes.
        activations: one per layer (``len(dims) - 1``), keys of ``ACTIVATIONS``.
        impl: forced implementation for the whole-MLP call (default: dispatcher).

    CPU inference runs on weights packed on the first such call and repacked when a
    parameter or activation changes (``conveyor.kernels.linear.PackCache``); after a
    write through ``.data``, which that cannot see, call :meth:`refresh`.
    """

    def __init__(
        self, dims: Sequence[int], activations: Sequence[str], *, impl: str | None = None
    ) -> None:
        super().__init__()
        if len(dims) < 2 or len(activations) != len(dims) - 1:
            raise ValueError("dims: need [in, ..., out] and one activation per layer")
        self.layers = nn.ModuleList(
            FusedLinear(k, n, a) for k, n, a in zip(dims[:-1], dims[1:], activations, strict=True)
        )
        self.impl = impl
        self._work_per_row = sum(m.out_features * m.in_features for m in self.layers)
        self.refresh()

    def refresh(self) -> None:
        """Forget the packed weights (they are rebuilt on the next inference call)."""
        self._pack_cache = PackCache()

    def _layers(self) -> list[Layer]:
        return [(m.weight, m.bias, m.activation) for m in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            raise ValueError("x: expected at least 1 dimension [..., in_features], got 0-dim")
        if (
            torch.is_grad_enabled()
            or x.device.type != "cpu"
            or torch.jit.is_tracing()
            or autocast_dtype(x) is not None
        ):
            return fused_mlp(x, self._layers(), impl=self.impl)
        work = (x.numel() // max(1, x.shape[-1])) * self._work_per_row
        if dispatch.choose("mlp", "cpu", x.dtype, self.impl, work=work) != "cpp":
            return fused_mlp(x, self._layers(), impl="reference")
        # Serving hot path: the weights are packed once and reused until a parameter
        # changes (PackCache).
        return self._pack_cache.get(self._layers())(x)
