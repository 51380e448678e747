"""histogram_update: every implementation against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conveyor import _C
from conveyor.kernels import histogram_slots, histogram_update, histogram_update_reference


def _data(rows: int, features: int, n_edges: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, features)).astype(np.float32)
    if rows:
        mask = rng.random((rows, features))
        values[mask < 0.05] = np.nan
        values[(mask >= 0.05) & (mask < 0.08)] = np.inf
        values[(mask >= 0.08) & (mask < 0.11)] = -np.inf
    edges = np.sort(rng.standard_normal((features, n_edges)).astype(np.float32), axis=1)
    if rows:
        # Values exactly on edges, including the top edge (closed last bin).
        values[rng.integers(0, rows, size=min(rows, 50)), 0] = edges[0, n_edges // 2]
        values[rng.integers(0, rows, size=min(rows, 50)), 0] = edges[0, -1]
        values[rng.integers(0, rows, size=min(rows, 50)), 0] = edges[0, 0]
    return values, edges


def _reference(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.zeros((values.shape[1], histogram_slots(edges.shape[1])), dtype=np.int64)
    return histogram_update_reference(values, edges, counts)


@pytest.mark.parametrize(
    ("rows", "features", "n_edges"),
    [(0, 4, 5), (1, 1, 2), (7, 3, 21), (255, 5, 21), (257, 33, 9), (5000, 32, 21), (70000, 3, 4)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_matches_reference(rows: int, features: int, n_edges: int, threads: int) -> None:
    values, edges = _data(rows, features, n_edges, seed=rows * 31 + features)
    before = _C.get_num_threads()
    _C.set_num_threads(threads)
    try:
        got = histogram_update(values, edges, impl="cpp")
    finally:
        _C.set_num_threads(before)
    np.testing.assert_array_equal(got, _reference(values, edges))
    assert got.sum() == rows * features


def test_reference_slot_layout() -> None:
    edges = np.array([[0.0, 1.0, 2.0]], dtype=np.float32)
    values = np.array(
        [[-np.inf], [-1], [0], [0.5], [1], [2], [2.5], [np.inf], [np.nan]], np.float32
    )
    counts = histogram_update(values, edges, impl="reference")
    # below, [0,1), [1,2], above, NaN
    np.testing.assert_array_equal(counts, [[2, 2, 2, 2, 1]])
    np.testing.assert_array_equal(histogram_update(values, edges, impl="cpp"), counts)


def test_duplicate_edges_are_well_defined() -> None:
    # Quantile edges of a discrete feature repeat; each value still lands in exactly one slot.
    edges = np.array([[0, 0, 1, 1, 1, 3]], dtype=np.float32)
    values = np.array([[0], [0], [1], [2], [3], [3], [4], [-1]], dtype=np.float32)
    got = histogram_update(values, edges, impl="cpp")
    np.testing.assert_array_equal(got, _reference(values, edges))
    np.testing.assert_array_equal(got, [[1, 0, 2, 0, 0, 4, 1, 0]])


def test_split_point_masses_gives_a_point_mass_its_own_bin() -> None:
    from conveyor.kernels.histogram import split_point_masses

    edges = np.array([[0.0] * 5 + [1.0], [0.1, 0.2, 0.2, 0.3, 0.4, 0.4]])
    split = split_point_masses(edges)
    assert (np.diff(split.astype(np.float32), axis=1) > 0).all()  # strictly, in float32
    assert split[0, 0] == 0.0 and split[0, -1] == 1.0 and split[1, 3] == 0.3  # others kept
    # The zeros and the ones of a flag land in different bins now (slots 1 and 5).
    counts = histogram_update(np.array([[0.0, 0.2], [1.0, 0.2]], np.float32), split)
    assert counts[0, 1] == 1 and counts[0, 5] == 1
    assert counts[1, 2] == 2  # the point mass at 0.2: its own bin, [0.2, next float32)


def test_counts_accumulate() -> None:
    values, edges = _data(1000, 4, 11, seed=1)
    counts = histogram_update(values, edges, impl="cpp")
    histogram_update(values, edges, counts, impl="cpp")
    np.testing.assert_array_equal(counts, 2 * _reference(values, edges))


def test_converts_float64_and_non_contiguous_values() -> None:
    values, edges = _data(300, 6, 8, seed=2)
    wide = np.asfortranarray(values.astype(np.float64))
    np.testing.assert_array_equal(histogram_update(wide, edges), _reference(values, edges))
    np.testing.assert_array_equal(
        histogram_update(values[::2, 1:4], edges[1:4]), _reference(values[::2, 1:4], edges[1:4])
    )


def test_bfloat16_tensors_are_converted() -> None:
    # numpy has no bfloat16: such tensors go over as float32 (they were a TypeError).
    values, edges = _data(200, 3, 6, seed=5)
    v16 = torch.from_numpy(values).bfloat16()
    e16 = torch.from_numpy(edges).bfloat16()
    want = _reference(v16.float().numpy(), e16.float().numpy())
    np.testing.assert_array_equal(histogram_update(v16, e16), want)


def test_env_var_forces_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    values, edges = _data(100, 2, 5, seed=3)
    monkeypatch.setenv("CONVEYOR_HISTOGRAM_IMPL", "reference")
    np.testing.assert_array_equal(histogram_update(values, edges), _reference(values, edges))
    monkeypatch.setenv("CONVEYOR_HISTOGRAM_IMPL", "bogus")
    with pytest.raises(ValueError, match="impl"):
        histogram_update(values, edges)
    with pytest.raises(ValueError, match="cannot run on host arrays"):
        histogram_update(values, edges, impl="cuda")


def test_torch_cpu_tensors_are_viewed_without_copy() -> None:
    torch = pytest.importorskip("torch")
    values, edges = _data(500, 3, 6, seed=4)
    counts = torch.zeros((3, histogram_slots(6)), dtype=torch.int64)
    out = histogram_update(torch.from_numpy(values), torch.from_numpy(edges), counts)
    assert out is counts
    np.testing.assert_array_equal(counts.numpy(), _reference(values, edges))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": np.zeros(5, np.float32)}, "values: expected 2 dimensions"),
        ({"edges": np.zeros((3, 5), np.float32)}, r"edges: expected shape \(2, n_edges\)"),
        ({"edges": np.zeros((2, 1), np.float32)}, "at least 2 edges"),
        ({"edges": np.array([[0, 1], [2, 1]], np.float32)}, "row 1 is not sorted"),
        ({"edges": np.array([[0, np.nan], [0, 1]], np.float32)}, "NaN"),
        ({"counts": np.zeros((2, 4), np.int32)}, "counts: expected int64 array of shape"),
        ({"counts": np.zeros((2, 5), np.int64)}, "counts: expected int64 array of shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    args = {
        "values": np.zeros((3, 2), np.float32),
        "edges": np.array([[0, 1], [0, 1]], np.float32),
        "counts": None,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        histogram_update(args["values"], args["edges"], args["counts"])


def test_extension_checks_arguments_itself() -> None:
    # Called directly, the compiled op must refuse bad buffers, not crash.
    values = np.zeros((3, 2), np.float32)
    edges = np.array([[0, 1], [0, 1]], np.float32)
    with pytest.raises(TypeError, match="counts: expected dtype int64"):
        _C.histogram_update(values, edges, np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match="counts: must be C-contiguous"):
        _C.histogram_update(values, edges, np.zeros((4, 2), np.int64).T)
    readonly = np.zeros((2, 4), np.int64)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="counts: must be writeable"):
        _C.histogram_update(values, edges, readonly)
    with pytest.raises(ValueError, match="edges: expected 2 rows"):
        _C.histogram_update(values, np.zeros((3, 2), np.float32), np.zeros((2, 4), np.int64))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("rows", "features", "n_edges"),
    [
        (0, 3, 5),
        (1000, 32, 21),  # 4-wide loads
        (30_001, 36, 21),  # ... features not a multiple of 32
        (20_011, 40, 63),  # ... 6 lifting steps, values at the top edge
        (200_003, 48, 2),  # ... many grid strides
        (5003, 7, 9),  # features % 4 != 0: one value per load
        (200_003, 12, 2),  # many grid strides: the tracked feature wraps
        (2000, 8, 63),  # the largest padded edge row of the shared path (64)
        (2000, 8, 64),  # one more edge: the global-atomics path
        (3001, 700, 21),  # 700 features x 23 slots overflow shared memory: global path
        (40_000, 32, 21),  # 2^20 values and more: the lookup-table kernel
        (150_001, 7, 21),  # ... one value per load
    ],
)
def test_cuda_matches_reference(rows: int, features: int, n_edges: int) -> None:
    torch = pytest.importorskip("torch")
    values, edges = _data(rows, features, n_edges, seed=5)
    got = histogram_update(torch.from_numpy(values).cuda(), torch.from_numpy(edges).cuda())
    np.testing.assert_array_equal(got.cpu().numpy(), _reference(values, edges))


@pytest.mark.gpu
def test_cuda_matches_reference_on_an_unaligned_view() -> None:
    # A view starting one float in: no 16-byte alignment, so no 4-wide loads.
    torch = pytest.importorskip("torch")
    values, edges = _data(4001, 16, 21, seed=8)
    flat = torch.zeros(values.size + 1, dtype=torch.float32, device="cuda")
    flat[1:] = torch.from_numpy(values.ravel()).cuda()
    view = flat[1:].view(values.shape)
    got = histogram_update(view, torch.from_numpy(edges).cuda())
    np.testing.assert_array_equal(got.cpu().numpy(), _reference(values, edges))


def _awkward_edges(kind: str, features: int, n_edges: int, rng) -> np.ndarray:
    """Edges that stress the lookup table's cells (see csrc/cuda/histogram.cu)."""
    if kind == "duplicates":  # a discrete feature: many edges share a value
        return np.sort(rng.integers(-2, 3, (features, n_edges)).astype(np.float32), axis=1)
    if kind == "constant":  # every edge equal: a zero range
        return np.full((features, n_edges), np.float32(0.25))
    if kind == "infinite":  # an infinite range: every value in cell 0
        edges = np.sort(rng.standard_normal((features, n_edges)).astype(np.float32), axis=1)
        edges[:, 0], edges[:, -1] = -np.inf, np.inf
        return edges
    if kind == "clustered":  # a huge range around edges closer than one cell
        inner = rng.standard_normal((features, n_edges - 2)) * 1e-6
        outer = np.tile([-3e38, 3e38], (features, 1))
        return np.sort(np.concatenate([inner, outer], axis=1).astype(np.float32), axis=1)
    return np.sort(rng.standard_normal((features, n_edges)).astype(np.float32), axis=1)


@pytest.mark.gpu
@pytest.mark.parametrize("cells", [16, 64, 1024])
@pytest.mark.parametrize(
    ("rows", "features", "n_edges", "kind"),
    [
        (0, 3, 5, "normal"),
        (1, 1, 2, "normal"),
        (5000, 32, 21, "normal"),  # 4-wide loads, one feature group per thread
        (30_001, 36, 21, "normal"),  # a grid that must be a multiple of 9 blocks
        (20_011, 40, 127, "normal"),  # the most edges the table holds
        (5003, 7, 9, "normal"),  # features % 4 != 0: one value per load
        (200_003, 12, 3, "normal"),  # many grid strides, two loads in flight
        (4001, 16, 21, "duplicates"),
        (4001, 16, 9, "constant"),
        (4001, 16, 21, "infinite"),
        (4001, 16, 21, "clustered"),
    ],
)
def test_cuda_lookup_table_matches_reference(
    rows: int, features: int, n_edges: int, kind: str, cells: int
) -> None:
    rng = np.random.default_rng(rows + features + cells)
    values, _ = _data(rows, features, n_edges, seed=9)
    edges = _awkward_edges(kind, features, n_edges, rng)
    if rows:  # values on the edges, and tiny values around zero
        values[rng.integers(0, rows, size=min(rows, 200)), :] = edges[:, rng.integers(0, n_edges)]
        values[rng.integers(0, rows, size=min(rows, 200)), :] *= np.float32(1e-30)
    _check_cuda_kernel(values, edges, lut_cells=cells)


def _check_cuda_kernel(values: np.ndarray, edges: np.ndarray, **options: int) -> None:
    """The CUDA kernel with ``options`` (lut_cells, stages) against the reference."""
    torch = pytest.importorskip("torch")
    from conveyor.kernels.histogram import _histogram_update_cuda

    got = _histogram_update_cuda(
        torch.from_numpy(values).cuda(), torch.from_numpy(edges).cuda(), None, "cuda",
        check_edges=False, **options,
    )  # fmt: skip
    np.testing.assert_array_equal(got.cpu().numpy(), _reference(values, edges))


@pytest.mark.gpu
@pytest.mark.parametrize("stages", [-1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize(
    ("rows", "features", "n_edges", "kind"),
    [
        (200_003, 32, 21, "normal"),  # many grid strides: the ring wraps many times
        (30_001, 36, 21, "clustered"),  # a grid that must be a multiple of 9 blocks
        (3, 16, 21, "normal"),  # fewer groups than stages in flight
        (5003, 7, 9, "normal"),  # features % 4 != 0: register loads, stages ignored
    ],
)
def test_cuda_staged_loads_match_reference(
    rows: int, features: int, n_edges: int, kind: str, stages: int
) -> None:
    rng = np.random.default_rng(rows + features + stages)
    values, _ = _data(rows, features, n_edges, seed=11)
    edges = _awkward_edges(kind, features, n_edges, rng)
    for cells in (0, 1024):  # the automatic table (none below 2^20 values) and a forced one
        _check_cuda_kernel(values, edges, lut_cells=cells, stages=stages)


@pytest.mark.gpu
def test_cuda_lookup_table_cells_are_checked() -> None:
    torch = pytest.importorskip("torch")
    from conveyor.kernels.histogram import _histogram_update_cuda

    values, edges = _data(10, 2, 3, seed=1)
    with pytest.raises(RuntimeError, match="lut_cells must be"):
        _histogram_update_cuda(
            torch.from_numpy(values).cuda(), torch.from_numpy(edges).cuda(), None, "cuda",
            check_edges=False, lut_cells=100,
        )  # fmt: skip
    for stages in (-2, 1, 5, 16):
        with pytest.raises(RuntimeError, match="stages must be"):
            _histogram_update_cuda(
                torch.from_numpy(values).cuda(), torch.from_numpy(edges).cuda(), None, "cuda",
                check_edges=False, stages=stages,
            )  # fmt: skip


def test_cpp_matches_reference_on_arbitrary_inputs() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)

    @settings(max_examples=150, deadline=None)
    @given(
        rows=st.integers(0, 300),
        features=st.integers(1, 5),
        n_edges=st.integers(2, 8),
        data=st.data(),
    )
    def check(rows: int, features: int, n_edges: int, data: hypothesis.strategies.DataObject):
        values = data.draw(arrays(np.float32, (rows, features), elements=floats))
        finite = st.floats(-1e6, 1e6, width=32)
        edges = np.sort(data.draw(arrays(np.float32, (features, n_edges), elements=finite)), axis=1)
        np.testing.assert_array_equal(
            histogram_update(values, edges, impl="cpp"), _reference(values, edges)
        )

    check()


def test_triton_matches_reference_interpreted() -> None:
    pytest.importorskip("triton")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("covered by the gpu tests")
    # 300 x 3 values: 4 programs of 256 in the interpreter; NaN, infs and edge hits included.
    values, edges = _data(300, 3, 6, seed=6)
    np.testing.assert_array_equal(
        histogram_update(values, edges, impl="triton"), _reference(values, edges)
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("rows", "features", "n_edges"), [(0, 3, 5), (1000, 32, 21), (3001, 700, 21)]
)
def test_triton_matches_reference_on_gpu(rows: int, features: int, n_edges: int) -> None:
    torch = pytest.importorskip("torch")
    values, edges = _data(rows, features, n_edges, seed=7)
    got = histogram_update(
        torch.from_numpy(values).cuda(), torch.from_numpy(edges).cuda(), impl="triton"
    )
    np.testing.assert_array_equal(got.cpu().numpy(), _reference(values, edges))
