"""fused_linear / FusedLinear: every implementation against nn.Linear + activation.

Tolerances: see _tolerances.py (float32 1e-5 with inputs scaled so outputs are
O(1)). Gradients: torch.autograd.gradcheck in float64 on the C++ path itself
(it is templated for double). Triton runs in the interpreter on tiny shapes;
the CUDA and compiled-Triton paths are `gpu` tests.
"""

from __future__ import annotations

import math

import pytest
import torch
from _tolerances import assert_close
from torch import nn

from conveyor.kernels import ACTIVATIONS, FusedLinear, fused_linear, linear_reference
from conveyor.kernels.dispatch import has_compiled, triton_installed
from conveyor.kernels.linear import activation_reference

ACTS = tuple(ACTIVATIONS)


def _inputs(M, N, K, dtype=torch.float32, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g, dtype=torch.float64)
    w = torch.randn(N, K, generator=g, dtype=torch.float64) / math.sqrt(max(K, 1))
    b = torch.randn(N, generator=g, dtype=torch.float64) if bias else None

    def cast(t):
        return None if t is None else t.to(dtype=dtype, device=device).requires_grad_()

    return cast(x), cast(w), cast(b)


def _relu_through_mask_of(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``z`` where the implementation's ReLU output ``y`` is positive, else 0: the
    reference for ReLU's gradients. A GEMM that sums in another order can put a
    pre-activation within rounding of zero on the other side of it (cuBLAS, by
    default, reduces 16-bit split-K partial sums in 16 bits:
    ``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction``), and a
    flipped mask moves a weight gradient by a whole input row. The forward check
    bounds how far such a pre-activation is from zero; this checks that the backward
    follows the forward's own mask, and is exact ReLU wherever the masks agree."""
    positive = y.detach().to(z.device) > 0
    flips = positive != (z.detach() > 0)
    if flips.any():  # only within rounding of zero: else a wrong mask, not an order
        bound = 0.05 * z.detach().abs().max().clamp(min=1)
        assert (z.detach()[flips].abs() <= bound).all(), f"{int(flips.sum())} masks flipped"
    return z * positive.to(z.dtype)


def _check(impl, M, N, K, act, dtype=torch.float32, device="cpu", bias=True):
    x, w, b = _inputs(M, N, K, dtype, device, bias, seed=M * 7 + N * 3 + K)
    y = fused_linear(x, w, b, act, impl=impl)
    # The reference in float64 on the host, rounded once: the fairest target.
    xr, wr, br = (
        None if t is None else t.detach().double().cpu().requires_grad_() for t in (x, w, b)
    )
    ref = linear_reference(xr, wr, br, act)
    assert y.dtype == dtype and y.shape == (M, N)
    assert_close(y.cpu(), ref, dtype)
    if act == "relu":
        ref = _relu_through_mask_of(y, linear_reference(xr, wr, br, "none"))
    gy = torch.randn(M, N, dtype=torch.float64)
    ins = [t for t in (x, w, b) if t is not None]
    got = torch.autograd.grad(y, ins, gy.to(dtype=dtype, device=device), allow_unused=True)
    want = torch.autograd.grad(ref, [t for t in (xr, wr, br) if t is not None], gy)
    scale = math.sqrt(max(M, 1))  # dW and db sum over the batch
    for g, r in zip(got, want, strict=True):
        assert_close(g.cpu(), r, dtype, scale=scale)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize(
    ("M", "N", "K"),
    [(1, 1, 1), (7, 33, 5), (100, 70, 300), (97, 257, 513), (6, 32, 256), (13, 65, 1)],
)
def test_cpp_matches_reference(M: int, N: int, K: int, act: str) -> None:
    _check("cpp", M, N, K, act)


# The forward's two CPU paths (csrc/cpu/linear.cpp, linear_uses_dot_products):
# dot-product tiles of 4 x 4 outputs up to 16 rows, 64 from K = 128, 128 from K = 256
# and 256 from K = 512, and for layers of fewer than 16 outputs (64 from K = 128) at
# any batch (on AVX-512), and the packed GEMM beyond; both with ragged K (not a
# multiple of 16), N (not of 4) and rows (not of 4), in both dtypes.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("M", "N", "K"),
    [
        *[(15, 23, 70), (62, 13, 131), (127, 30, 257), (255, 70, 515)],  # dot products
        *[(300, 15, 70), (300, 63, 131)],  # dot products: narrow layers at any batch
        *[(17, 19, 70), (66, 70, 131), (129, 71, 257), (257, 70, 515), (300, 16, 127)],  # GEMM
    ],
)
def test_cpp_both_forward_paths(M: int, N: int, K: int, dtype: torch.dtype) -> None:
    _check("cpp", M, N, K, "gelu", dtype=dtype)


@pytest.mark.parametrize(("M", "N", "K"), [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 0, 0)])
def test_cpp_empty_shapes(M: int, N: int, K: int) -> None:
    _check("cpp", M, N, K, "gelu")


def test_cpp_without_bias_and_large_k() -> None:
    _check("cpp", 9, 40, 1100, "silu", bias=False)  # several K blocks of 256


# The GEMM (300 rows), the dot-product tiles (64 rows of K = 260) split over threads
# by output columns, and a narrow layer's tiles (300 x 20 outputs) split by rows.
@pytest.mark.parametrize(("M", "N"), [(300, 200), (64, 200), (300, 20)])
def test_cpp_multithreaded_matches_single(M: int, N: int) -> None:
    from conveyor import _C

    x, w, b = _inputs(M, N, 260)
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        one = fused_linear(x, w, b, "relu", impl="cpp")
        _C.set_num_threads(2)
        two = fused_linear(x, w, b, "relu", impl="cpp")
    finally:
        _C.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


@pytest.mark.parametrize("act", ACTS)
def test_cpp_gradcheck_float64(act: str) -> None:
    x, w, b = _inputs(4, 5, 6, torch.float64)
    if act == "relu":  # keep pre-activations away from the kink
        with torch.no_grad():
            b += 0.5 * torch.sign(b)
    assert torch.autograd.gradcheck(lambda *a: fused_linear(*a, act, impl="cpp"), (x, w, b))


def test_module_matches_nn_linear_and_leading_dims() -> None:
    torch.manual_seed(0)
    fused = FusedLinear(24, 16, "gelu", impl="cpp")
    plain = nn.Sequential(nn.Linear(24, 16), nn.GELU())
    plain[0].load_state_dict(fused.state_dict())
    x = torch.randn(3, 5, 24, requires_grad=True)
    y, r = fused(x), plain(x)
    torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    r.sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, plain[0].weight.grad, rtol=1e-5, atol=1e-4)
    assert "activation='gelu'" in repr(fused)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_module_inference_packs_its_weights_once(monkeypatch, dtype, bias: bool) -> None:
    import copy
    import pickle

    from conveyor.kernels import mlp

    packs = []
    real = mlp.PackedMLP
    monkeypatch.setattr(mlp, "PackedMLP", lambda layers: packs.append(1) or real(layers))
    torch.manual_seed(0)
    layer = FusedLinear(96, 70, "silu", bias=bias, dtype=dtype)
    x = torch.randn(2, 13, 96, dtype=dtype)
    want = linear_reference(x, layer.weight, layer.bias, "silu")
    with torch.no_grad():
        assert_close(layer(x), want, dtype)
        assert_close(layer(x[:, ::2]), want[:, ::2], dtype)  # a strided x
    assert packs == [1]
    with torch.no_grad():
        layer.weight.mul_(0.5)  # in place: the version counter moves
        assert_close(layer(x), linear_reference(x, layer.weight, layer.bias, "silu"), dtype)
    assert packs == [1, 1]
    # The compiled copy stays behind in deepcopy and pickle (the trainer deepcopies models).
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        with torch.no_grad():
            assert_close(clone(x), layer(x), dtype)
    # Training and forced implementations go through fused_linear.
    layer(x).sum().backward()
    with torch.no_grad():
        FusedLinear(96, 70, impl="reference", dtype=dtype)(x)
        monkeypatch.setenv("CONVEYOR_LINEAR_IMPL", "reference")
        layer(x)
    assert len(packs) == 4  # the two clones packed their own copies; nothing else did


def test_module_inference_sees_a_new_activation_and_refresh_after_a_data_write() -> None:
    torch.manual_seed(1)
    layer = FusedLinear(16, 8, "none")
    x = torch.randn(5, 16)
    with torch.no_grad():
        layer(x)
        layer.activation = "relu"  # part of the packed copy's key
        assert_close(layer(x), linear_reference(x, layer.weight, layer.bias, "relu"), x.dtype)
        layer.weight.data.mul_(2)  # no version counter moves: refresh() is the way
        layer.refresh()
        assert_close(layer(x), linear_reference(x, layer.weight, layer.bias, "relu"), x.dtype)


def test_module_inference_sees_a_parameter_swapped_in_at_a_reused_address() -> None:
    # The packed copy was keyed by address and version only: a new Parameter allocated
    # where a freed one was, its version 0 again, was served the old weights.
    torch.manual_seed(0)
    layer = FusedLinear(64, 64, bias=False)
    x = torch.randn(2, 64)
    for i in range(8):
        layer.weight = nn.Parameter(torch.randn(64, 64))
        if i % 2:
            continue
        with torch.no_grad():
            assert_close(layer(x), x @ layer.weight.T, x.dtype, scale=10)


def test_relu_keeps_nan_like_torch() -> None:
    x = torch.tensor([[float("nan"), 1.0], [-1.0, 2.0]])
    w, b = torch.eye(2), torch.zeros(2)
    want = torch.relu(x @ w.t() + b)
    for impl in ("cpp", "reference"):
        torch.testing.assert_close(fused_linear(x, w, b, "relu", impl=impl), want, equal_nan=True)
    # The gradient at a NaN pre-activation passes, as torch's threshold_backward
    # lets it (z <= 0 is false): dx of one row [NaN] through a 1 x 1 weight is 1.
    impls = ["cpp"] + (["triton"] if triton_installed() and not torch.cuda.is_available() else [])
    z = torch.tensor([[float("nan")], [-1.0], [0.0], [2.0]])
    # And at a dead unit the gradient is 0 whatever dy is, an infinite or NaN dy too
    # (threshold_backward selects; a product would give inf * 0 = NaN).
    gy = torch.tensor([[1.0], [float("inf")], [float("nan")], [1.0]])
    passed = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    for impl in ("reference", *impls):
        for dy in (torch.ones(4, 1), gy):
            zg = z.clone().requires_grad_()
            fused_linear(zg, torch.ones(1, 1), None, "relu", impl=impl).backward(dy)
            torch.testing.assert_close(zg.grad, passed, msg=impl)
    layer = FusedLinear(2, 2, "relu")
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.zero_()
        torch.testing.assert_close(layer(x), want, equal_nan=True)  # the packed path


def test_bad_arguments() -> None:
    x, w, b = _inputs(3, 4, 5)
    with pytest.raises(ValueError, match="activation"):
        fused_linear(x, w, b, "tanh")
    with pytest.raises(ValueError, match="shapes"):
        fused_linear(x, w.t(), b)
    with pytest.raises(ValueError, match="bias"):
        fused_linear(x, w, b[:2])
    # The C++ path takes raw pointers: a tensor elsewhere must be refused, not read.
    with pytest.raises(ValueError, match="devices"):
        fused_linear(x, w.to("meta"), b, impl="cpp")
    with pytest.raises(ValueError, match="devices"):
        fused_linear(x, w, b.to("meta"), impl="cpp")


def test_extension_checks_arguments_itself() -> None:
    import numpy as np

    from conveyor import _C

    x = np.zeros((3, 5), np.float32)
    w = np.zeros((4, 5), np.float32)
    y = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"w: expected shape \(4, 5\)"):
        _C.linear_forward(x, np.zeros((4, 6), np.float32), None, 0, y, None)
    with pytest.raises(TypeError, match="y: expected dtype float32"):
        _C.linear_forward(x, w, None, 0, np.zeros((3, 4)), None)
    with pytest.raises(ValueError, match="act"):
        _C.linear_forward(x, w, None, 9, y, None)
    with pytest.raises(ValueError, match="act"):
        _C.linear_forward_ptr(0, 0, 0, 1, 1, 1, 9, 0, 0, False)
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        _C.linear_forward_ptr(0, 0, 0, -1, 1, 1, 0, 0, 0, False)
    with pytest.raises(ValueError, match="z: the pre-activation"):
        _C.linear_backward(y, None, x, w, 2, None, None, None)


needs_triton = pytest.mark.skipif(not triton_installed(), reason="triton not installed")


@needs_triton
@pytest.mark.parametrize("act", ACTS)
def test_triton_matches_reference_interpreted(act: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check("triton", 5, 19, 21, act)  # one ragged block in every dimension


def _check_act_grad(
    M: int, N: int, act: str, bias_grad: bool, dtype, device: str, impl: str = "triton", offset=0
) -> None:
    """Triton's (or CUDA's) activation gradient, with the bias gradient from the same
    pass, against autograd through the reference activation in float64. ``offset``:
    the inputs start that many elements into their storage (not 16-byte aligned)."""
    if impl == "triton":
        from conveyor.kernels.triton_kernels.linear import act_grad
    else:
        from conveyor.kernels.linear import cuda_act_grad as act_grad

    g0 = torch.Generator().manual_seed(M * 31 + N)
    z, gy = (torch.randn(M, N, generator=g0, dtype=torch.float64) for _ in range(2))

    def placed(t: torch.Tensor) -> torch.Tensor:
        flat = torch.empty(offset + t.numel(), dtype=dtype, device=device)
        return flat[offset:].view(M, N).copy_(t)

    zd, gyd = placed(z), placed(gy)
    z64 = zd.double().cpu().requires_grad_()
    (want,) = torch.autograd.grad(activation_reference(z64, act), z64, gyd.double().cpu())
    g, gb = act_grad(gyd, zd, ACTIVATIONS[act], bias_grad)
    assert g.dtype == dtype and g.shape == (M, N) and g.is_contiguous()
    assert_close(g.cpu(), want, dtype)
    if not bias_grad:
        assert gb is None
        return
    assert gb.dtype == dtype and gb.shape == (N,)
    # The bias gradient sums the gradient as stored (what dx and dW are made of).
    assert_close(gb.cpu(), g.double().cpu().sum(0), dtype, scale=math.sqrt(max(M, 1)))


@needs_triton
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize(("M", "N"), [(1, 1), (16, 16), (37, 19), (0, 5), (4, 0)])
def test_triton_act_grad_with_bias_grad_interpreted(M: int, N: int, act: str) -> None:
    # The interpreter's programs take 16 rows in two steps of 8 and 16 columns: 37 x 19
    # leaves a ragged row step, row block and column block.
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    for bias_grad in (True, False):
        _check_act_grad(M, N, act, bias_grad, torch.float32, "cpu")


@needs_triton
def test_triton_act_grad_of_a_layer_too_wide_for_the_grid_interpreted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Column blocks go on the grid's second axis (CUDA: at most 65535 of them): wider
    # layers sum the bias gradient with torch. The limit is lowered to reach that path.
    from conveyor.kernels.triton_kernels import linear as triton_linear

    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    monkeypatch.setattr(triton_linear, "_MAX_GRID_Y", 1)
    for act in ("relu", "gelu"):
        _check_act_grad(5, 40, act, True, torch.float32, "cpu")


@needs_triton
def test_triton_relu_grad_is_zero_at_dead_units_whatever_dy_interpreted() -> None:
    from conveyor.kernels.triton_kernels.linear import act_grad

    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    z = torch.tensor([[0.0, 1.0], [2.0, -3.0]])
    gy = torch.tensor([[float("inf"), 1.0], [1.0, float("nan")]])
    for bias_grad in (True, False):
        g, gb = act_grad(gy, z, ACTIVATIONS["relu"], bias_grad)
        torch.testing.assert_close(g, torch.ops.aten.threshold_backward(gy, z, 0))
        if bias_grad:
            torch.testing.assert_close(gb, torch.tensor([1.0, 1.0]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("M", "N"), [(1, 1), (5, 300), (70001, 257), (262144, 64)])
@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_triton_act_grad_with_bias_grad_on_gpu(M: int, N: int, act: str, dtype) -> None:
    # 70001 x 257: several row steps per program, a ragged last program and column
    # block; 262144 x 64: one column block, the tall narrow gradient of a layer.
    if not triton_installed():
        pytest.skip("triton not installed")
    _check_act_grad(M, N, act, True, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("M", "N", "offset"),
    [(1, 1, 0), (5, 300, 0), (70001, 257, 0), (262144, 64, 0), (3, 70000, 0), (9, 65536, 0),
     (1000, 256, 1), (0, 8, 0), (8, 0, 0)],
)  # fmt: skip
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu"])
def test_cuda_act_grad_with_and_without_bias_grad(M: int, N: int, offset: int, act: str, dtype):
    # 16-byte packs where rows are whole packs and buffers aligned (5 x 300 in float32,
    # 262144 x 64, 9 x 65536: 32 column tiles), one element at a time otherwise (257,
    # 70000 bf16 columns, and the views one element into their storage); 70001 rows: a
    # ragged last chunk; 0 rows: a zero bias gradient.
    if not has_compiled("act_grad_cuda"):
        pytest.skip("conveyor._C built without CUDA")
    for bias_grad in (True, False):
        _check_act_grad(M, N, act, bias_grad, dtype, "cuda", impl="cuda", offset=offset)


@pytest.mark.gpu
def test_cuda_act_grad_bias_grad_is_the_same_on_every_run() -> None:
    # Partial sums added in a fixed order, no float atomics: as torch's sum, the bias
    # gradient is reproducible bit for bit.
    from conveyor.kernels.linear import cuda_act_grad

    if not has_compiled("act_grad_cuda"):
        pytest.skip("conveyor._C built without CUDA")
    gy, z = (torch.randn(262144, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    first = cuda_act_grad(gy, z, ACTIVATIONS["relu"], True)[1]
    for _ in range(5):
        assert torch.equal(cuda_act_grad(gy, z, ACTIVATIONS["relu"], True)[1], first)


@pytest.mark.gpu
def test_cuda_relu_grad_is_zero_at_dead_units_whatever_dy() -> None:
    from conveyor.kernels.linear import cuda_act_grad

    if not has_compiled("act_grad_cuda"):
        pytest.skip("conveyor._C built without CUDA")
    z = torch.tensor([[0.0, 1.0], [2.0, -3.0]], device="cuda")
    gy = torch.tensor([[float("inf"), 1.0], [1.0, float("nan")]], device="cuda")
    for bias_grad in (True, False):
        g, gb = cuda_act_grad(gy, z, ACTIVATIONS["relu"], bias_grad)
        torch.testing.assert_close(g, torch.ops.aten.threshold_backward(gy, z, 0))
        if bias_grad:
            torch.testing.assert_close(gb, torch.tensor([1.0, 1.0], device="cuda"))


def test_cuda_act_grad_refuses_a_missing_partial_buffer() -> None:
    # (No device is touched: the binding checks its arguments first.)
    if not has_compiled("act_grad_cuda"):
        pytest.skip("conveyor._C built without CUDA")
    from conveyor import _C

    with pytest.raises(ValueError, match="part_f32_ptr"):
        _C.act_grad_cuda(8, 8, 4, 4, 1, 8, 0, 0, 8, 0, 0)
    with pytest.raises(ValueError, match="N: at most"):
        _C.act_grad_cuda(8, 8, 4, 1 << 31, 1, 8, 8, 1, 8, 0, 0)
    with pytest.raises(ValueError, match="act"):
        _C.act_grad_cuda(8, 8, 4, 4, 5, 8, 8, 1, 8, 0, 0)


@needs_triton
def test_triton_empty_batch_interpreted() -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check("triton", 0, 3, 4, "relu")


def _check_tma_layouts(dtype: torch.dtype, device: str, M: int, N: int, K: int) -> None:
    """The descriptor kernel, forced, on the three operand layouts the op uses:
    forward ``x @ W.T`` (b stored [N, K]), ``dx = g @ W`` and ``dW = g.T @ x``
    (a stored [K, M])."""
    from conveyor.kernels.triton_kernels import linear as triton_linear

    g = torch.Generator().manual_seed(3)
    x, w, gy = (torch.randn(*s, generator=g).to(dtype) for s in ((M, K), (N, K), (M, N)))
    bias = torch.randn(N, generator=g).to(dtype)
    x, w, gy, bias = (t.to(device) for t in (x, w, gy, bias))
    y, z = triton_linear.matmul(x, w.t(), bias=bias, act=4, keep_z=True, tma=True)
    x, w, gy, bias = (t.cpu().double() for t in (x, w, gy, bias))
    pre = x @ w.t() + bias
    assert_close(z.cpu(), pre, dtype, scale=math.sqrt(K))
    assert_close(y.cpu(), torch.nn.functional.silu(pre), dtype, scale=math.sqrt(K))
    dx = triton_linear.matmul(gy.to(device, dtype), w.to(device, dtype), tma=True)[0]
    dw = triton_linear.matmul(gy.to(device, dtype).t(), x.to(device, dtype), tma=True)[0]
    assert_close(dx.cpu(), gy @ w, dtype, scale=math.sqrt(N))
    assert_close(dw.cpu(), gy.t() @ x, dtype, scale=math.sqrt(M))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_tma_kernel_every_layout_interpreted(dtype: torch.dtype) -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check_tma_layouts(dtype, "cpu", 33, 40, 72)  # 16-byte rows, tiles of 16 left ragged


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("M", "N", "K"), [(33, 40, 72), (300, 384, 1000)])  # fixed tiles, tuned
def test_triton_tma_kernel_every_layout_on_gpu(dtype: torch.dtype, M: int, N: int, K: int) -> None:
    if not triton_installed() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("needs triton and a GPU with the tensor memory accelerator")
    _check_tma_layouts(dtype, "cuda", M, N, K)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda", "cublaslt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("M", "N", "K"),
    # (300, 384, 1000): autotuned, float32 operands copied K-major for the backward.
    [(1, 1, 1), (33, 65, 17), (300, 257, 1000), (300, 384, 1000), (0, 4, 8)],
)
@pytest.mark.parametrize("act", ["relu", "gelu"])  # all five run in the interpreter tests
def test_gpu_matches_reference(impl: str, dtype: torch.dtype, M: int, N: int, K: int, act: str):
    if impl == "triton" and not triton_installed():
        pytest.skip("triton not installed")
    _check(impl, M, N, K, act, dtype=dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ["none", "gelu_tanh", "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_cublaslt_every_activation_on_gpu(dtype: torch.dtype, act: str, bias: bool) -> None:
    # gelu_tanh: fused into cuBLASLt's epilogue for inference, unfused with a gradient.
    _check("cublaslt", 300, 257, 1000, act, dtype=dtype, device="cuda", bias=bias)
    x, w, b = (None if t is None else t.detach() for t in _inputs(64, 96, 128, dtype, "cuda", bias))
    with torch.no_grad():
        got = fused_linear(x, w, b, act, impl="cublaslt")
    ref = linear_reference(x.double(), w.double(), None if b is None else b.double(), act)
    if dtype == torch.float32 and act == "gelu_tanh":
        # cuBLASLt's GELU epilogue may use the hardware tanh (~5e-4 relative); torch's
        # own test of this epilogue allows 1e-4 in float32.
        torch.testing.assert_close(got.double().cpu(), ref.cpu(), rtol=1e-4, atol=1e-4)
    else:
        assert_close(got.double().cpu(), ref.cpu(), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["reference", "triton", "cuda", "cublaslt"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_autocast_runs_every_implementation_in_its_dtype(impl: str, act: str) -> None:
    # float32 parameters under autocast: the GEMM in bfloat16, as nn.Linear's, and
    # float32 gradients for the parameters.
    if impl == "triton" and not triton_installed():
        pytest.skip("triton not installed")
    # Multiples of 1/16 that bfloat16 holds exactly: products and float32 sums are
    # exact, the rounding to bfloat16 comes once at the end.
    g = torch.Generator().manual_seed(5)
    x, w, b = (
        ((torch.randn(*shape, generator=g) * scale).round().clamp(-64, 64) / 16)
        .cuda()
        .requires_grad_()
        for shape, scale in (((300, 1000), 16), ((257, 1000), 2), ((257,), 16))
    )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fused_linear(x, w, b, act, impl=impl)
        want = linear_reference(x, w, b, act)
        z = linear_reference(x, w, b, "none")
    assert y.dtype == want.dtype == torch.bfloat16
    assert_close(y.float().cpu(), want.float().cpu(), torch.bfloat16)
    if act == "relu":  # torch's own bf16 GEMM may not sum exactly (_relu_through_mask_of)
        want = _relu_through_mask_of(y, z)
    got = torch.autograd.grad(y.float().sum(), (x, w, b))
    ref = torch.autograd.grad(want.float().sum(), (x, w, b))
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == torch.float32
        assert_close(g.cpu(), r.cpu(), torch.bfloat16, scale=math.sqrt(300))


@pytest.mark.gpu
@pytest.mark.parametrize(("M", "N", "K"), [(2048, 2048, 2048), (8192, 32, 64)])
def test_triton_backward_on_both_gemms_on_gpu(M: int, N: int, K: int) -> None:
    # float32 without TF32: dx and dW of 2048 x 2048 outputs fill the GPU, so
    # they run on our 3xTF32 GEMM; the narrow ones of 8192 x 32 -> 64 on torch's.
    # GELU, not ReLU: with K = 2048 some pre-activations lie within the GEMM's
    # rounding of 0, and a ReLU mask flipped against the float64 reference moves a
    # gradient by a whole row of W.
    if not triton_installed():
        pytest.skip("triton not installed")
    _check("triton", M, N, K, "gelu", dtype=torch.float32, device="cuda")


@needs_triton
def test_triton_float16_interpreted() -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check("triton", 5, 19, 21, "silu", dtype=torch.float16)  # half storage, float32 math


# The cublaslt backend is torch ops only, so its logic (which activation is fused,
# ReLU's derivative read from the output, the backward's three GEMMs) runs on CPU
# too once the dispatcher is told it may; fused_linear offers it on CUDA only.
# On CPU torch computes exact GELU where CUDA's epilogue computes the tanh form, so
# the backend fuses gelu_tanh on CUDA tensors only.
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_cublaslt_backend_on_cpu(monkeypatch: pytest.MonkeyPatch, act: str, bias: bool) -> None:
    from conveyor.kernels import dispatch

    monkeypatch.setattr(dispatch, "available", lambda *args: True)
    x, w, b = _inputs(6, 5, 7, torch.float64, bias=bias)
    if act == "relu":  # keep pre-activations away from the kink
        with torch.no_grad():
            x += 0.1 * torch.sign(x)
            w.copy_(torch.sign(w))
    ins = tuple(t for t in (x, w, b) if t is not None)

    def run(*args):
        return fused_linear(args[0], args[1], args[2] if bias else None, act, impl="cublaslt")

    assert torch.autograd.gradcheck(run, ins)
    want = linear_reference(x, w, b, act)
    torch.testing.assert_close(run(*ins), want)
    with torch.no_grad():  # inference: no autograd node, no pre-activation kept
        torch.testing.assert_close(run(*ins), want)
    x0, w0 = torch.zeros(3, 0, dtype=torch.float64), torch.zeros(5, 0, dtype=torch.float64)
    b0 = None if b is None else b.detach()
    torch.testing.assert_close(run(x0, w0, b0), linear_reference(x0, w0, b0, act))


def test_cublaslt_is_offered_on_cuda_only() -> None:
    from conveyor.kernels import dispatch

    assert dispatch.available("linear", "cublaslt", "cuda", torch.bfloat16)
    assert not dispatch.available("linear", "cublaslt", "cpu", torch.float32)
    assert not dispatch.available("layer_norm", "cublaslt", "cuda", torch.float32)
    with pytest.raises(ValueError, match="cannot run on cpu"):
        fused_linear(torch.randn(2, 3), torch.randn(4, 3), impl="cublaslt")


def test_a_second_derivative_matches_torch() -> None:
    # A gradient penalty differentiates the gradient: the compiled backward has no
    # graph, so under create_graph the op differentiates its torch reference (the
    # penalty's dW term was silently missing).
    torch.manual_seed(3)
    x0 = torch.randn(4, 8, dtype=torch.float64)
    w0, b0 = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, dtype=torch.float64)

    def penalised(impl: str) -> tuple[torch.Tensor, ...]:
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        y = fused_linear(x, w, b, "gelu", impl=impl)
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return torch.autograd.grad((gx**2).sum() + y.sum(), (w, b))

    for got, want in zip(penalised("cpp"), penalised("reference"), strict=True):
        torch.testing.assert_close(got, want)


# gelu_tanh is left out: its z**3 overflows float32 here, in torch as in ours (NaN).
@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_cpp_activations_and_gradients_at_extreme_inputs(activation: str) -> None:
    # exp() was clamped to exp(+-88): SiLU(-1e38) came out -0.45 and GELU'(1e38) 1.49.
    # Against the float64 reference of the same float32 pre-activations.
    z = torch.tensor([[-3e38, -1e38, -1e30, -100.0, -20.0, 0.5, 20.0, 1e30, 1e38]])
    eye = torch.eye(1)
    x = z.T.clone().requires_grad_(True)  # [9, 1] through a 1 -> 1 identity layer
    out = fused_linear(x, eye, None, activation, impl="cpp")
    out.sum().backward()
    ref_x = z.T.double().requires_grad_(True)
    ref = linear_reference(ref_x, eye.double(), None, activation)
    ref.sum().backward()
    finite = torch.isfinite(ref.detach()).squeeze(1) & torch.isfinite(ref_x.grad).squeeze(1)
    torch.testing.assert_close(
        out.detach()[finite], ref.detach().float()[finite], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(x.grad[finite], ref_x.grad.float()[finite], rtol=1e-5, atol=1e-6)
