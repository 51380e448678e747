"""layer_norm: every implementation against torch.nn.functional.layer_norm.

float32 within 1e-5 (see _tolerances.py; inputs with a large mean included);
gradcheck in float64 on the C++ path itself. Triton runs in the interpreter on
tiny shapes; CUDA and compiled Triton are `gpu` tests.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _tolerances import assert_close

from conveyor.kernels import layer_norm
from conveyor.kernels.dispatch import triton_installed


def _check(
    impl, shape, n_dims=1, affine=(True, True), dtype=torch.float32, device="cpu", shift=0.0
):
    g = torch.Generator().manual_seed(sum(shape) + n_dims)
    normalized = shape[len(shape) - n_dims :]
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + shift
    w = torch.randn(*normalized, generator=g, dtype=torch.float64) if affine[0] else None
    b = torch.randn(*normalized, generator=g, dtype=torch.float64) if affine[1] else None

    def cast(t):
        return None if t is None else t.to(dtype=dtype, device=device).requires_grad_()

    xs, ws, bs = cast(x), cast(w), cast(b)
    y = layer_norm(xs, normalized, ws, bs, 1e-5, impl=impl)
    refs = [None if t is None else t.detach().double().cpu().requires_grad_() for t in (xs, ws, bs)]
    ref = F.layer_norm(refs[0], normalized, refs[1], refs[2], 1e-5)
    assert y.shape == xs.shape and y.dtype == dtype
    assert_close(y.cpu(), ref, dtype, scale=2)
    gy = torch.randn(*shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(
        y, [t for t in (xs, ws, bs) if t is not None], gy.to(dtype=dtype, device=device)
    )
    want = torch.autograd.grad(ref, [t for t in refs if t is not None], gy)
    rows = max(1, xs.numel() // max(1, math.prod(normalized)))
    for a, r in zip(got, want, strict=True):
        assert_close(a.cpu(), r, dtype, scale=2 * rows**0.5)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 300), (3, 4, 129), (1000, 33), (2, 4097)])
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)])
def test_cpp_matches_reference(shape: tuple[int, ...], affine: tuple[bool, bool]) -> None:
    _check("cpp", shape, affine=affine)


def test_cpp_large_mean_two_dims_and_empty() -> None:
    _check("cpp", (50, 64), shift=1000.0)
    _check("cpp", (6, 4, 5), n_dims=2)
    _check("cpp", (0, 16))
    empty_rows = torch.randn(3, 0)
    assert layer_norm(empty_rows, 0, impl="cpp").shape == (3, 0)


@pytest.mark.parametrize(("width", "first"), [(1024, 2024.0), (4096, 1e4), (65536, 1e3)])
def test_cpp_row_whose_first_element_is_far_from_its_mean(width: int, first: float) -> None:
    # A year in front of standardised features: statistics taken around the first
    # element cancelled in float32 (errors of 7e-3 to 4 here before).
    x = torch.randn(4, width, generator=torch.Generator().manual_seed(width), dtype=torch.float64)
    x[:, 0] = first
    got = layer_norm(x.float(), width, impl="cpp")
    want = F.layer_norm(x, (width,))
    assert_close(got, want, torch.float32, scale=4)


def test_cpp_gradcheck_float64() -> None:
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return layer_norm(x, 6, w, b, impl="cpp")

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_bad_arguments_raise() -> None:
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_norm(x, 5)
    with pytest.raises(ValueError, match="weight"):
        layer_norm(x, 4, torch.ones(5))
    # The compiled paths take raw pointers: mismatched tensors are refused, not read.
    with pytest.raises(ValueError, match="weight: expected x's dtype and device"):
        layer_norm(x, 4, torch.ones(4, dtype=torch.float64), impl="cpp")
    with pytest.raises(ValueError, match="bias: expected x's dtype and device"):
        layer_norm(x, 4, None, torch.ones(4, device="meta"), impl="cpp")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_cpp_inference_without_statistics(dtype: torch.dtype, affine: bool) -> None:
    # No gradient: the C++ forward writes no mean/rstd (null buffers).
    g = torch.Generator().manual_seed(11)
    x = torch.randn(37, 129, generator=g, dtype=dtype)
    w, b = (torch.randn(129, generator=g, dtype=dtype) if affine else None for _ in range(2))
    with torch.no_grad():
        got = layer_norm(x, 129, w, b, impl="cpp")
    want = torch.nn.functional.layer_norm(x.double(), (129,), *(
        None if t is None else t.double() for t in (w, b)
    ))  # fmt: skip
    assert_close(got, want, dtype)


def test_extension_pointer_binding_checks_arguments() -> None:
    from conveyor import _C

    with pytest.raises(ValueError, match="eps must be >= 0"):
        _C.layer_norm_forward_ptr(0, 0, 0, 1, 1, -1.0, 0, 0, 0, False)
    with pytest.raises(ValueError, match="both or neither"):
        _C.layer_norm_forward_ptr(0, 0, 0, 1, 1, 1e-5, 0, 8, 0, False)


needs_triton = pytest.mark.skipif(not triton_installed(), reason="triton not installed")


@needs_triton
@pytest.mark.parametrize("affine", [(True, True), (False, False)])
def test_triton_matches_reference_interpreted(affine: tuple[bool, bool]) -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check("triton", (3, 37), affine=affine)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (300, 1000), (64, 8192), (4096, 512), (0, 8)])
def test_gpu_matches_reference(impl: str, dtype: torch.dtype, shape: tuple[int, int]) -> None:
    if impl == "triton" and not triton_installed():
        pytest.skip("triton not installed")
    _check(impl, shape, dtype=dtype, device="cuda")


@pytest.mark.gpu
def test_gpu_default_takes_rows_wider_than_the_triton_kernel() -> None:
    # Inference from 2^25 elements defaults to Triton, whose kernel refuses rows over
    # 65,536 elements: those go to the CUDA kernel instead of raising.
    x = torch.randn(480, 70_000, device="cuda")
    w, b = torch.randn(70_000, device="cuda"), torch.randn(70_000, device="cuda")
    torch.testing.assert_close(
        layer_norm(x, 70_000, w, b), F.layer_norm(x, (70_000,), w, b), rtol=1e-4, atol=1e-4
    )


@needs_triton
def test_triton_float16_interpreted() -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check("triton", (3, 37), dtype=torch.float16)


def test_cpp_two_threads_match_reference() -> None:
    # Per-thread partial sums of dweight/dbias: the path the 1-thread tests skip.
    from conveyor import _C

    before = _C.get_num_threads()
    try:
        _C.set_num_threads(2)
        _check("cpp", (300, 257))
    finally:
        _C.set_num_threads(before)


def test_cpp_second_derivative_matches_torch() -> None:
    torch.manual_seed(4)
    x0, w0 = torch.randn(5, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)

    def penalised(impl: str) -> torch.Tensor:
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = layer_norm(x, 7, w, None, impl=impl)
        (gx,) = torch.autograd.grad((y * y.detach()).sum(), x, create_graph=True)
        return torch.autograd.grad((gx**2).sum(), w)[0]

    torch.testing.assert_close(penalised("cpp"), penalised("reference"))


def test_cpp_float32_rows_whose_squares_overflow() -> None:
    # Deviations of 2e19 square past float32's range although the variance (1e38) does
    # not: the statistics are taken again in double instead of giving rstd 0 (zeros).
    x = torch.tensor([[1e19, -1e19, 0.0, 5.0], [3e38, -3e38, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    out = layer_norm(x, (4,), impl="cpp")
    expected = F.layer_norm(x.double(), (4,)).float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Rows holding inf or NaN still come out as torch's do.
    bad = torch.tensor([[float("nan"), 1.0, 2.0], [float("inf"), 1.0, 2.0]])
    assert torch.isnan(layer_norm(bad, (3,), impl="cpp")).any(dim=1).all()
