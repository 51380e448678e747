"""Fused linear + bias + activation: ``y = act(x @ weight.T + bias)``.

Shapes: ``x [..., in_features]``, ``weight [out_features, in_features]`` (the
``nn.Linear`` layout), ``bias [out_features]`` or ``None``; ``y [..., out_features]``.
dtypes: float32 everywhere; float64 on the reference and C++ paths (gradcheck);
float16/bfloat16 on the GPU paths (Triton, CUDA), accumulated in float32.

Activations (``ACTIVATIONS``): ``"none"``, ``"relu"``, ``"gelu"`` (exact erf form,
torch's default ``approximate="none"``), ``"gelu_tanh"`` (torch's
``approximate="tanh"``) and ``"silu"``.

Forward and backward run as one ``torch.autograd.Function`` per implementation
(see ``conveyor.kernels.dispatch``): the forward fuses bias and activation into
the GEMM's epilogue and keeps the pre-activation ``z`` when a gradient is
needed; the backward forms ``g = dy * act'(z)`` in one pass and runs
``dx = g @ W``, ``dW = g.T @ x``, ``db = g.sum(0)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from conveyor.kernels import dispatch
from conveyor.kernels.second_order import reference_grads

ACTIVATIONS = {"none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}
_ACTIVATION_NAMES = {code: name for name, code in ACTIVATIONS.items()}


def activation_reference(z: torch.Tensor, activation: str) -> torch.Tensor:
    """torch's own activation named ``activation`` applied to ``z``."""
    if activation == "none":
        return z
    if activation == "relu":
        return F.relu(z)
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "silu":
        return F.silu(z)
    # Output activations of the whole-MLP inference paths only (kernels/mlp.py).
    if activation == "sigmoid":
        return torch.sigmoid(z)
    if activation == "tanh":
        return torch.tanh(z)
    raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {activation!r}")


def linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    """``nn.Linear`` followed by the activation, in torch eager: the definition."""
    return activation_reference(F.linear(x, weight, bias), activation)


# --- C++ (CPU) ---------------------------------------------------------------


def _np(t: torch.Tensor | None):
    """Zero-copy numpy view of a contiguous CPU tensor (``None`` passes through)."""
    return None if t is None else t.detach().numpy()


def _cpp_forward(x, weight, bias, act, keep_z):
    from conveyor import _C

    # Pointers, not numpy arrays: fused_linear() has checked shapes, dtypes and
    # contiguity, which the numpy binding would check again (~4 us a call:
    # most of a small layer's time).
    M, K = x.shape
    N = weight.shape[0]
    y = x.new_empty((M, N))
    z = torch.empty_like(y) if keep_z and act else None
    p = dispatch.ptr
    _C.linear_forward_ptr(
        p(x), p(weight), p(bias), M, N, K, act, p(y), p(z), x.dtype == torch.float64
    )
    return y, z


def _cpp_backward(gy, z, x, weight, act, need):
    from conveyor import _C

    gx = torch.empty_like(x) if need[0] else None
    gw = torch.empty_like(weight) if need[1] else None
    gb = gy.new_empty(weight.shape[0]) if need[2] else None
    _C.linear_backward(_np(gy), _np(z), _np(x), _np(weight), act, _np(gx), _np(gw), _np(gb))
    return gx, gw, gb


# --- CUDA ----------------------------------------------------------------------


def _cuda_forward(x, weight, bias, act, keep_z):
    from conveyor import _C

    M, K = x.shape
    N = weight.shape[0]
    y = x.new_empty((M, N))
    z = torch.empty_like(y) if keep_z and act else None
    p = dispatch.ptr
    with torch.cuda.device(x.device):
        _C.linear_forward_cuda(
            p(x), p(weight), p(bias), M, N, K, act, p(y), p(z),
            dispatch.cuda_dtype_code(x.dtype), dispatch.cuda_stream(x),
        )  # fmt: skip
    return y, z


def _cuda_backward(gy, z, x, weight, act, need):
    from conveyor import _C

    M, K = x.shape
    N = weight.shape[0]
    gx = torch.empty_like(x) if need[0] else None
    gw = torch.empty_like(weight) if need[1] else None
    gb = torch.zeros(N, dtype=torch.float32, device=x.device) if need[2] else None
    gp = torch.empty_like(gy) if act else None
    p = dispatch.ptr
    with torch.cuda.device(x.device):
        _C.linear_backward_cuda(
            p(gy), p(z), p(x), p(weight), M, N, K, act, p(gp), p(gx), p(gw), p(gb),
            dispatch.cuda_dtype_code(x.dtype), dispatch.cuda_stream(x),
        )  # fmt: skip
    return gx, gw, None if gb is None else gb.to(gy.dtype)


# --- Triton ---------------------------------------------------------------------


def _triton_forward(x, weight, bias, act, keep_z):
    from conveyor.kernels.triton_kernels import linear

    return linear.forward(x, weight, bias, act, keep_z)


def _triton_backward(gy, z, x, weight, act, need):
    from conveyor.kernels.triton_kernels import linear

    return linear.backward(gy, z, x, weight, act, need)


# --- cuBLASLt, through torch (CUDA) ----------------------------------------------
#
# cuBLASLt's GEMM can apply the bias and a ReLU or tanh-GELU in its epilogue, as
# apex's and flash-attention's fused dense layers do; torch reaches that epilogue
# through `torch._addmm_activation` (falling back to addmm + the activation in place
# when cuBLASLt cannot take the operands). Eager `relu(linear(x))` runs the same
# GEMM with the bias epilogue and then a second kernel over the whole output, so
# this does strictly less: one pass over the output instead of three. ReLU's
# derivative is read from the output (y > 0 exactly where z > 0); tanh-GELU's needs
# the pre-activation, which the epilogue does not return, so it is fused only
# without a gradient. Other activations run the GEMM with the bias fused, then
# torch's activation (eager's kernels).

_RELU, _GELU_TANH = ACTIVATIONS["relu"], ACTIVATIONS["gelu_tanh"]


def _cublaslt_forward(x, weight, bias, act, keep_z):
    wt = weight.t()
    # Only CUDA's epilogue computes the tanh form; torch's CPU kernel for the same
    # call computes exact GELU. With K = 0 torch's CUDA addmm returns the bias
    # before it reaches any epilogue, so the activation would be skipped.
    fused = x.shape[1] > 0 and (act == _RELU or (act == _GELU_TANH and not keep_z and x.is_cuda))
    if fused:
        b = bias if bias is not None else x.new_zeros(weight.shape[0])
        y = torch._addmm_activation(b, x, wt, use_gelu=act == _GELU_TANH)
        return y, (y if keep_z and act == _RELU else None)
    z = torch.mm(x, wt) if bias is None else torch.addmm(bias, x, wt)
    if act == 0:
        return z, None
    return activation_reference(z, _ACTIVATION_NAMES[act]), (z if keep_z else None)


def cuda_act_grad(gy: torch.Tensor, z: torch.Tensor, act: int, bias_grad: bool):
    """``(g, db)`` as Triton's ``act_grad`` (``g = dy * act'(z)``, and ``db = g.sum(0)``
    summed in float32 in a fixed order when ``bias_grad``, else None), from
    ``conveyor._C``'s CUDA kernel: one pass over ``dy`` and ``z``, launched from C++
    (csrc/cuda/act_grad.cu). ``gy`` and ``z``: contiguous ``[M, N]`` on one GPU."""
    from conveyor import _C

    M, N = gy.shape
    g = torch.empty_like(gy)
    gb = torch.empty(N, dtype=gy.dtype, device=gy.device) if bias_grad else None
    # Float32 partial sums, at most 4 MiB of them: the kernel takes as many rows as
    # fill the GPU, fewer for wide layers.
    part = (
        torch.empty(
            (min(M, max(1, (1 << 20) // max(N, 1))), N), dtype=torch.float32, device=gy.device
        )
        if bias_grad and M and N
        else None
    )
    p = dispatch.ptr
    with torch.cuda.device(gy.device):
        _C.act_grad_cuda(
            p(gy), p(z), M, N, act, p(g), p(part), 0 if part is None else part.shape[0], p(gb),
            dispatch.cuda_dtype_code(gy.dtype), dispatch.cuda_stream(gy),
        )  # fmt: skip
    return g, gb


def _cublaslt_backward(gy, z, x, weight, act, need):
    # z is the output for ReLU (see _cublaslt_forward): y > 0 exactly where z > 0.
    gb = None
    if act and gy.is_cuda and dispatch.has_compiled("act_grad_cuda"):
        # The activation's and the bias's gradients in one pass: torch's column sum
        # took 0.13 of a step's 0.47 ms on an H200. (Triton's act_grad does the same
        # work, but its launch costs ~0.05 ms of host time: with it the step ran
        # 0.84-1.37x eager, with eager's kernels 0.99-1.17x, with this one
        # 1.00-1.47x; benchmarks/gpu-results/2026-11-28-h200/run14-experiments.)
        g, gb = cuda_act_grad(gy, z, act, bool(need[2]))
    else:
        g = _activation_backward(gy, z, _ACTIVATION_NAMES[act])
        gb = g.sum(0) if need[2] else None
    gx = g.mm(weight) if need[0] else None
    gw = g.t().mm(x) if need[1] else None
    return gx, gw, gb


def _activation_backward(gy, z, name):
    aten = torch.ops.aten
    if name == "none":
        return gy
    if name == "relu":
        return aten.threshold_backward(gy, z, 0)
    if name == "silu":
        return aten.silu_backward(gy, z)
    return aten.gelu_backward(gy, z, approximate="tanh" if name == "gelu_tanh" else "none")


_BACKENDS = {
    "cpp": (_cpp_forward, _cpp_backward),
    "cuda": (_cuda_forward, _cuda_backward),
    "triton": (_triton_forward, _triton_backward),
    "cublaslt": (_cublaslt_forward, _cublaslt_backward),
}


class FusedLinearFunction(torch.autograd.Function):
    """Autograd wrapper around one compiled implementation (2-D ``x`` only)."""

    @staticmethod
    def forward(ctx, x, weight, bias, act: int, impl: str):
        fwd, _ = _BACKENDS[impl]
        keep_z = any(ctx.needs_input_grad[:3])
        y, z = fwd(x, weight, bias, act, keep_z)
        ctx.act, ctx.impl = act, impl
        ctx.save_for_backward(x, weight, bias, z)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, z = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: see kernels/second_order.py
            name = _ACTIVATION_NAMES[ctx.act]
            gx, gw, gb = reference_grads(
                lambda x, w, b: linear_reference(x, w, b, name),
                (x, weight, bias),
                ctx.needs_input_grad[:3],
                gy,
            )
            return gx, gw, gb, None, None
        _, bwd = _BACKENDS[ctx.impl]
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        gx, gw, gb = bwd(gy.contiguous(), z, x, weight, ctx.act, need)
        return gx, gw, gb, None, None


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` through the implementation the dispatcher picks.

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]``, same dtype and device as ``x``.
        bias: ``[out_features]`` or ``None``.
        activation: a key of ``ACTIVATIONS`` (default ``"none"``).
        impl: force ``"reference"``, ``"cpp"``, ``"triton"``, ``"cuda"`` or
            ``"cublaslt"`` (CUDA only: cuBLASLt with the bias and ReLU, or tanh-GELU
            without a gradient, in its epilogue); default:
            ``conveyor.kernels.dispatch.choose`` (env ``CONVEYOR_LINEAR_IMPL``).

    Returns:
        ``[..., out_features]`` in ``x``'s dtype (under ``torch.autocast``, CPU or GPU,
        in the autocast dtype, as ``nn.Linear``); differentiable in all inputs. Under
        ``torch.jit.trace`` the reference runs (see ``conveyor.kernels.dispatch``).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dimension [..., in_features], got a 0-dim tensor")
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"shapes: x [..., {x.shape[-1]}] does not match weight {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    dt = autocast_dtype(x)
    if dt is not None:
        # As torch's own linear under autocast: the GEMM in the autocast dtype, with
        # gradients flowing back through the casts to the float32 parameters. (The
        # compiled implementations are not autocast ops: they would run in float32,
        # and cuBLASLt's backward would meet 16-bit gradients and float32 weights.
        # Autocast leaves float64 alone, and so does this.)
        x, weight = x.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
    lead = x.shape[:-1]
    work = math.prod(lead) * weight.shape[0] * weight.shape[1]
    grad = dispatch.needs_grad(x, weight, bias)
    detail = (math.prod(lead), weight.shape[0], weight.shape[1], activation)
    chosen = dispatch.choose(
        "linear", dispatch.device_type(x), x.dtype, impl, work=work, grad=grad, detail=detail
    )
    if chosen == "reference":
        return linear_reference(x, weight, bias, activation)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError("dtypes: x, weight and bias must share one dtype")
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        raise ValueError("devices: x, weight and bias must be on one device")
    x2 = x.reshape(math.prod(lead), x.shape[-1]).contiguous()
    b = None if bias is None else bias.contiguous()
    w = weight.contiguous()
    if grad:
        y = FusedLinearFunction.apply(x2, w, b, ACTIVATIONS[activation], chosen)
    else:  # inference: no autograd node, no saved pre-activation
        y = _BACKENDS[chosen][0](x2, w, b, ACTIVATIONS[activation], False)[0]
    return y.reshape(*lead, weight.shape[0])


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype ``torch.autocast`` gives a linear layer on ``x``'s device, or None when
    autocast is off there (or ``x`` is float64, which autocast leaves alone). CPU autocast
    counts as CUDA's does: ``nn.Linear`` runs in bfloat16 under it, so the fused ops do
    too (before, the C++ path answered float32 and the reference bfloat16)."""
    if x.dtype == torch.float64:
        return None
    try:
        if not torch.is_autocast_enabled(x.device.type):
            return None
    except RuntimeError:  # a device type autocast does not know (meta)
        return None
    return torch.get_autocast_dtype(x.device.type)


class PackCache:
    """A module's layers packed for CPU inference (``conveyor.kernels.PackedMLP``),
    rebuilt when a parameter changes storage (``.to()``, a new Parameter), is
    modified in place (its version counter moves: an optimizer step,
    ``load_state_dict``, ``p.copy_()`` under ``no_grad``) or a layer's activation
    changes. A write through ``p.data`` moves no version counter and is not seen:
    the module's ``refresh()`` drops the packed copy. Copies and pickles of it
    start empty: the packed weights are a compiled object, cheap to rebuild.

    The tensors packed are held (one more reference, not a copy), so that their
    identity is part of the key: a tensor freed and replaced by a new one at the same
    address, its version counter at 0 again (a Parameter swapped in, a weight
    recomputed by a parametrization on every access), matched the key of address and
    version alone and was served the old weights."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._tensors: tuple[torch.Tensor, ...] = ()
        self._packed = None

    def get(self, layers: list[tuple[torch.Tensor, torch.Tensor | None, str]]):  # -> PackedMLP
        tensors = tuple(t for w, b, _ in layers for t in (w, b) if t is not None)
        if any(t.is_inference() for t in tensors):
            # Parameters made under torch.inference_mode have no version counter (reading
            # it raises), so an in-place change could not be seen: packed per call.
            from conveyor.kernels.mlp import PackedMLP

            return PackedMLP(layers)
        key = (
            tuple(act for _, _, act in layers),
            tuple((id(t), t.data_ptr(), t._version) for t in tensors),
        )
        # id() is safe to compare while self._tensors keeps the packed tensors alive.
        if self._packed is None or key != self._key:
            from conveyor.kernels.mlp import PackedMLP

            self._packed, self._key, self._tensors = PackedMLP(layers), key, tensors
        return self._packed

    def __reduce__(self) -> tuple:
        return (PackCache, ())


# CPU inference through a module's own weights (fixed between calls) packs them
# once (kernels/mlp.py PackedMLP). Module against nn.Linear + activation, one
# thread (benchmarks/kernels/module_inference.py, benchmarks/README.md): 1.08x
# at 2^18 multiply-adds, 1.3-1.9x at 2^19-2^21, 1.5-3.6x above; 0.86-0.98x at
# 2^16-2^17, where the ~10 us of either call is all overhead. The packed path
# runs at every size: through the module, fused_linear (checks, dispatch) is
# slower still there.


class FusedLinear(nn.Module):
    """Drop-in for ``nn.Sequential(nn.Linear(in, out), activation)``.

    Parameters and initialisation are those of ``nn.Linear``, so a state dict
    moves between the two (keys ``weight``, ``bias``). CPU inference (no
    autograd graph) runs on a packed copy of the
    weights (``conveyor.kernels.PackedMLP``), made on the first such call and
    remade after the parameters change (not after a write through ``.data``:
    call :meth:`refresh` then); it costs one more copy of the weights in memory.
    Forcing an implementation (``impl``, ``CONVEYOR_LINEAR_IMPL``) bypasses it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "none",
        bias: bool = True,
        *,
        impl: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {tuple(ACTIVATIONS)}, got {activation!r}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.activation, self.impl = activation, impl
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self._pack_cache = PackCache()
        self.reset_parameters()

    def refresh(self) -> None:
        """Forget the packed weights (they are rebuilt on the next inference call)."""
        self._pack_cache = PackCache()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation (Kaiming-uniform weight, uniform bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias
        if not torch.is_grad_enabled() or not (
            x.requires_grad or self.weight.requires_grad or (b is not None and b.requires_grad)
        ):
            packed = self._packed_for(x)
            if packed is not None:
                return packed(x)
        return fused_linear(x, self.weight, self.bias, self.activation, impl=self.impl)

    def _packed_for(self, x: torch.Tensor):  # -> PackedMLP | None
        """This layer's weights packed once, for CPU inference; None where ``fused_linear``
        decides (other devices and dtypes, an implementation forced by ``impl`` or the
        environment)."""
        w = self.weight
        if x.device.type != "cpu" or torch.jit.is_tracing():
            return None
        if x.dtype != w.dtype or x.dtype not in (torch.float32, torch.float64):
            return None
        if x.dim() == 0 or x.shape[-1] != self.in_features or autocast_dtype(x) is not None:
            return None  # fused_linear raises the shape error, or runs autocast's dtype
        env = dispatch.forced_by_env("linear")
        forced = self.impl or (env and env[1])
        if forced not in (None, "cpp") or not dispatch.available("mlp", "cpp", "cpu", w.dtype):
            return None
        return self._pack_cache.get([(w, self.bias, self.activation)])

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, activation={self.activation!r}"
        )
