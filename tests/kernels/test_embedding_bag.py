"""embedding_bag: every implementation against torch.nn.functional.embedding_bag.

float32 within 1e-5 (see _tolerances.py); gradcheck in float64 on the C++ path
itself. Triton runs in the interpreter on tiny shapes; CUDA and compiled
Triton are `gpu` tests.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _tolerances import assert_close

from conveyor.kernels import embedding_bag
from conveyor.kernels.dispatch import triton_installed


def _bags(V, D, B, nnz, *, empty_bags=True, dtype=torch.float32, device="cpu", psw=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(V, D, generator=g, dtype=torch.float64)
    indices = torch.randint(0, V, (nnz,), generator=g)
    if B:
        cuts = torch.randint(0, nnz + 1, (B - 1,), generator=g) if empty_bags else None
        if cuts is None:  # B non-empty bags of about nnz / B each
            cuts = torch.linspace(1, max(nnz - 1, 1), B - 1).long()
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.sort(cuts).values])
    else:
        offsets = torch.zeros(0, dtype=torch.long)
    weights = torch.randn(nnz, generator=g, dtype=torch.float64) if psw else None

    def cast(t):
        return None if t is None else t.to(dtype=dtype, device=device).requires_grad_()

    return cast(weight), indices.to(device), offsets.to(device), cast(weights)


def _check(impl, V, D, B, nnz, mode, psw=False, dtype=torch.float32, device="cpu", **kw):
    weight, indices, offsets, weights = _bags(
        V, D, B, nnz, dtype=dtype, device=device, psw=psw, **kw
    )
    out = embedding_bag(indices, weight, offsets, mode, weights, impl=impl)
    wr = weight.detach().double().cpu().requires_grad_()
    pr = None if weights is None else weights.detach().double().cpu().requires_grad_()
    ref = F.embedding_bag(indices.cpu(), wr, offsets.cpu(), mode=mode, per_sample_weights=pr)
    assert out.shape == (B, D) and out.dtype == dtype
    assert_close(out.cpu(), ref, dtype, scale=4)
    if B == 0:
        return
    go = torch.randn(B, D, dtype=torch.float64)
    ins = [t for t in (weight, weights) if t is not None]
    got = torch.autograd.grad(out, ins, go.to(dtype=dtype, device=device))
    want = torch.autograd.grad(ref, [t for t in (wr, pr) if t is not None], go)
    for g, r in zip(got, want, strict=True):
        assert_close(g.cpu(), r, dtype, scale=4)


CASES = [
    (10, 1, 1, 1),
    (50, 7, 5, 23),
    (1000, 33, 17, 300),
    (300, 128, 64, 4096),
    (64, 16, 8, 0),  # every bag empty
]


@pytest.mark.parametrize(("V", "D", "B", "nnz"), CASES)
@pytest.mark.parametrize(("mode", "psw"), [("sum", False), ("sum", True), ("mean", False)])
def test_cpp_matches_reference(V: int, D: int, B: int, nnz: int, mode: str, psw: bool) -> None:
    _check("cpp", V, D, B, nnz, mode, psw)


def _check_row_widths(D: int, dtype: torch.dtype, mode: str, psw: bool, rows: int) -> None:
    # The compiled-in widths (16..128) have their own loops, which take rows
    # in pairs: bags of every length 0..9 (odd ones leave a row over), in
    # chunks of 64 bags far from the end of the index array (prefetching
    # without a bounds test) and near it (the look-ahead stops at nnz).
    lengths = torch.arange(10).repeat(30)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    nnz = int(lengths.sum())
    g = torch.Generator().manual_seed(D)
    weight = torch.randn(rows, D, generator=g, dtype=dtype)
    indices = torch.randint(0, rows, (nnz,), generator=g)
    weights = torch.randn(nnz, generator=g, dtype=dtype) if psw else None
    out = embedding_bag(indices, weight, offsets, mode, weights, impl="cpp")
    ref = F.embedding_bag(
        indices, weight.double(), offsets, mode=mode,
        per_sample_weights=None if weights is None else weights.double(),
    )  # fmt: skip
    assert_close(out, ref, dtype, scale=4)


@pytest.mark.parametrize("D", [16, 32, 64, 128, 24])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("mode", "psw"), [("sum", False), ("sum", True), ("mean", False)])
def test_cpp_row_widths_forward(D: int, dtype: torch.dtype, mode: str, psw: bool) -> None:
    # 200 rows (at most 200 KB) fit in any L2 (256 KiB or more), where the
    # loops prefetch half of each row. D = 24 is a width without its own loop.
    _check_row_widths(D, dtype, mode, psw, rows=200)


@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize(("mode", "psw"), [("sum", False), ("sum", True), ("mean", False)])
def test_cpp_row_widths_forward_table_beyond_l2(D: int, mode: str, psw: bool) -> None:
    # 2^17 rows of float32 (16-64 MB) fit in no L2: the loops prefetch whole
    # rows. D = 16 is one cache line, prefetched whole either way.
    _check_row_widths(D, torch.float32, mode, psw, rows=1 << 17)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("D", [16, 20])
def test_cpp_int32_and_int64_indices(index_dtype: torch.dtype, D: int) -> None:
    # int32 indices and offsets are widened once; int64 ones go through as
    # they are (no copy): both must match torch, which takes either.
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(1000, D, generator=g)
    indices = torch.randint(0, 1000, (700,), generator=g).to(index_dtype)
    offsets = torch.arange(0, 700, 7).to(index_dtype)
    weights = torch.rand(700, generator=g)
    for mode, psw in (("sum", None), ("mean", None), ("sum", weights)):
        out = embedding_bag(indices, weight, offsets, mode, psw, impl="cpp")
        ref = F.embedding_bag(indices, weight, offsets, mode=mode, per_sample_weights=psw)
        assert_close(out, ref, torch.float32, scale=4)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_cpp_empty_batch(mode: str) -> None:
    _check("cpp", 20, 4, 0, 0, mode)


def test_cpp_large_offsets_and_rows() -> None:
    # Large index values (a 2^20-row table), a bag of 70,000 entries, offsets past 2^16.
    weight = torch.randn(1 << 20, 2, requires_grad=True)
    indices = torch.cat([torch.randint((1 << 20) - 100, 1 << 20, (70_000,)), torch.arange(5)])
    offsets = torch.tensor([0, 69_999, 70_000, 70_002])
    out = embedding_bag(indices, weight, offsets, "mean", impl="cpp")
    ref = F.embedding_bag(indices, weight, offsets, mode="mean")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (gw,) = torch.autograd.grad(out.sum(), weight)
    (gr,) = torch.autograd.grad(ref.sum(), weight)
    torch.testing.assert_close(gw, gr, rtol=1e-5, atol=1e-7)


def test_cpp_two_dimensional_indices_and_threads() -> None:
    from conveyor import _C

    weight = torch.randn(100, 40)
    indices = torch.randint(0, 100, (2000, 6))
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(2)
        out = embedding_bag(indices, weight, mode="mean", impl="cpp")
    finally:
        _C.set_num_threads(before)
    torch.testing.assert_close(out, F.embedding_bag(indices, weight, mode="mean"))


@pytest.mark.parametrize(("mode", "psw"), [("sum", True), ("mean", False)])
def test_cpp_gradcheck_float64(mode: str, psw: bool) -> None:
    weight, indices, offsets, weights = _bags(12, 3, 4, 9, dtype=torch.float64, psw=psw)
    if weights is None:

        def fn(w):
            return embedding_bag(indices, w, offsets, mode, impl="cpp")

        assert torch.autograd.gradcheck(fn, (weight,))
    else:

        def fn(w, p):
            return embedding_bag(indices, w, offsets, mode, p, impl="cpp")

        assert torch.autograd.gradcheck(fn, (weight, weights))


def test_cpp_tensors_on_another_device_raise() -> None:
    # The C++ path reads raw host pointers: tensors elsewhere must not reach it.
    weight = torch.randn(10, 16)
    cpu, meta = torch.tensor([1, 2]), torch.tensor([1, 2], device="meta")
    with pytest.raises(ValueError, match="weight's device"):
        embedding_bag(meta, weight, torch.tensor([0]), impl="cpp")
    with pytest.raises(ValueError, match="weight's device"):
        embedding_bag(cpu, weight, torch.tensor([0], device="meta"), impl="cpp")
    with pytest.raises(ValueError, match="per_sample_weights"):
        embedding_bag(
            cpu, weight, torch.tensor([0]), "sum", torch.ones(2, device="meta"), impl="cpp"
        )


def test_pointer_binding_checks_its_scalars() -> None:
    from conveyor import _C

    out = torch.empty(1, 4)
    weight, indices, offsets = torch.randn(3, 4), torch.tensor([0, 5]), torch.tensor([0])
    p = [t.data_ptr() for t in (weight, indices, offsets, out)]
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        _C.embedding_bag_forward_ptr(p[0], 3, 4, p[1], -2, p[2], 1, 0, 0, p[3], False)
    with pytest.raises(ValueError, match="mode"):
        _C.embedding_bag_forward_ptr(p[0], 3, 4, p[1], 2, p[2], 1, 0, 7, p[3], False)
    with pytest.raises(ValueError, match="index 5 at position 1 is out of range"):
        _C.embedding_bag_forward_ptr(p[0], 3, 4, p[1], 2, p[2], 1, 0, 0, p[3], False)


def test_bad_arguments_raise() -> None:
    weight = torch.randn(10, 3)
    with pytest.raises(ValueError, match="out of range"):
        embedding_bag(torch.tensor([1, 10]), weight, torch.tensor([0]), impl="cpp")
    with pytest.raises(ValueError, match="out of range"):
        embedding_bag(torch.tensor([-1]), weight, torch.tensor([0]), impl="cpp")
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        embedding_bag(torch.tensor([1, 2]), weight, torch.tensor([1]), impl="cpp")
    with pytest.raises(ValueError, match="non-decreasing"):
        embedding_bag(torch.tensor([1, 2]), weight, torch.tensor([0, 2, 1]), impl="cpp")
    with pytest.raises(ValueError, match="per_sample_weights"):
        embedding_bag(torch.tensor([1]), weight, torch.tensor([0]), "mean", torch.ones(1))
    with pytest.raises(ValueError, match="mode"):
        embedding_bag(torch.tensor([1]), weight, torch.tensor([0]), "max")
    # Not truncated to rows 1 and 7, nor weights applied to the wrong samples.
    with pytest.raises(ValueError, match="indices: expected int64 or int32"):
        embedding_bag(torch.tensor([1.9, 7.5]), weight, torch.tensor([0]), "mean", impl="cpp")
    with pytest.raises(ValueError, match="offsets: expected int64 or int32"):
        embedding_bag(torch.tensor([1, 7]), weight, torch.tensor([0.0]), impl="cpp")
    with pytest.raises(ValueError, match=r"per_sample_weights: expected the shape of indices"):
        embedding_bag(torch.zeros(4, 2, dtype=torch.long), weight, None, "sum",
                      torch.ones(2, 4), impl="cpp")  # fmt: skip


@pytest.mark.parametrize("D", [16, 24])  # a width with its own loop, one without
@pytest.mark.parametrize("position", [0, 1, 2, 777, 1498, 1499])
def test_cpp_bad_index_anywhere_raises(D: int, position: int) -> None:
    # The forward checks indices as it gathers them, chunk by chunk (64 bags):
    # a bad one must raise wherever it sits (even or odd place in a bag, a
    # later chunk, the last position), with its position in the message.
    weight = torch.randn(50, D)
    offsets = torch.arange(0, 1500, 5)  # 300 bags of 5
    for bad in (50, -3):
        indices = torch.randint(0, 50, (1500,))
        indices[position] = bad
        with pytest.raises(ValueError, match=f"index {bad} at position {position} is out of range"):
            embedding_bag(indices, weight, offsets, impl="cpp")


@pytest.mark.parametrize("D", [16, 24])
@pytest.mark.parametrize(
    ("bag", "value", "reported"),
    [(150, 0, 149), (150, -1, 149), (299, 1501, 298), (64, 10_000, 63), (63, 1000, 63)],
)
def test_cpp_bad_offsets_in_a_later_chunk_raise(D: int, bag: int, value: int, reported: int):
    # Offsets are checked per chunk of 64 bags too, pairs across a chunk
    # boundary (bags 63 | 64) included; the message names the first bad bag.
    weight = torch.randn(50, D)
    indices = torch.randint(0, 50, (1500,))
    offsets = torch.arange(0, 1500, 5)
    offsets[bag] = value
    with pytest.raises(ValueError, match=rf"at most len\(indices\) \(bag {reported}\)"):
        embedding_bag(indices, weight, offsets, impl="cpp")


needs_triton = pytest.mark.skipif(not triton_installed(), reason="triton not installed")


@needs_triton
@pytest.mark.parametrize(("mode", "psw"), [("sum", False), ("sum", True), ("mean", False)])
def test_triton_matches_reference_interpreted(mode: str, psw: bool) -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check("triton", 30, 37, 5, 17, mode, psw)  # D = 37: two column blocks, one ragged


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # fp16: interpreter test
# D = 520: rows of more 16-byte packs than a warp has threads (CUDA's packed forward loops).
@pytest.mark.parametrize(
    ("V", "D", "B", "nnz"), [*CASES, (100_000, 64, 2048, 50_000), (200, 520, 9, 300)]
)
@pytest.mark.parametrize(("mode", "psw"), [("sum", False), ("sum", True), ("mean", False)])
def test_gpu_matches_reference(impl, dtype, V, D, B, nnz, mode, psw) -> None:
    if impl == "triton" and not triton_installed():
        pytest.skip("triton not installed")
    _check(impl, V, D, B, nnz, mode, psw, dtype=dtype, device="cuda")


@needs_triton
def test_triton_float16_interpreted() -> None:
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    _check("triton", 30, 37, 5, 17, "mean", dtype=torch.float16)


@pytest.mark.parametrize(("mode", "psw"), [("sum", True), ("mean", False)])
def test_cpp_two_threads_match_reference(mode: str, psw: bool) -> None:
    # Row ownership by thread in the backward: the path the 1-thread tests skip.
    from conveyor import _C

    before = _C.get_num_threads()
    try:
        _C.set_num_threads(2)
        _check("cpp", 500, 64, 300, 6000, mode, psw)
    finally:
        _C.set_num_threads(before)


@pytest.mark.parametrize(
    "impl",
    [
        "cpp",
        pytest.param("triton", marks=pytest.mark.skipif(not triton_installed(), reason="triton")),
        pytest.param("cuda", marks=pytest.mark.gpu),
    ],
)
@pytest.mark.parametrize("psw", [False, True])
def test_indices_in_no_bag_get_no_gradient(impl: str, psw: bool) -> None:
    # No bags (empty offsets) but some indices: the output is [0, D] and depends on
    # no row, so both gradients are zero (torch's own backward returns garbage here;
    # the CUDA backward returned uninitialised per-sample-weight gradients).
    # Triton runs CPU tensors only in its interpreter, i.e. where there is no GPU.
    device = "cuda" if impl == "cuda" or (impl == "triton" and torch.cuda.is_available()) else "cpu"
    dtype = torch.float64 if impl == "cpp" else torch.float32
    weight = torch.randn(10, 8, dtype=dtype, device=device, requires_grad=True)
    indices = torch.tensor([1, 2, 3], device=device)
    weights = torch.rand(3, dtype=dtype, device=device, requires_grad=True) if psw else None
    offsets = torch.empty(0, dtype=torch.long, device=device)
    out = embedding_bag(indices, weight, offsets, "sum", weights, impl=impl)
    assert out.shape == (0, 8)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    if psw:
        assert torch.equal(weights.grad, torch.zeros_like(weights))
