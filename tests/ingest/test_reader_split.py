"""The reader-level hold-out split: disjoint, complete, exactly once per part, stable."""

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.ingest.counts import CountCache, clear_memory
from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.source import Source
from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature
from conveyor.ingest.split import SplitConfig, is_val
from tests.ingest.conftest import EXT, write

SPEC = FeatureSpec(label=Label("y", "regression"), numeric=[NumericFeature("id")])


def _write(tmp, sizes, group):
    start = 0
    for i, n in enumerate(sizes):
        part = np.arange(start, start + n, dtype=np.float64)
        pq.write_table(
            pa.table({"id": part, "y": part}), tmp / f"p{i:02d}.parquet", row_group_size=group
        )
        start += n


def _expected(tmp, sizes, split):
    """Ids in ``split``'s part, from the definition: file path under the root, file row."""
    out, start = [], 0
    for i, n in enumerate(sizes):
        keep = split.keep(f"p{i:02d}.parquet", np.arange(n))
        out += (np.flatnonzero(keep) + start).tolist()
        start += n
    return out


def _ids(batches):
    return [int(v) for b in batches for v in b.features[:, 0].tolist()]


def test_hash_is_pinned_and_near_the_fraction():
    # Fixed values: the split must not move between versions, machines or processes.
    assert np.flatnonzero(is_val("day=1/part-0.parquet", np.arange(20), 0.3, 0)).tolist() == [
        4, 6, 7, 11, 14, 16, 17, 19,
    ]  # fmt: skip
    share = is_val("a.parquet", np.arange(200_000), 0.2, 7).mean()
    assert share == pytest.approx(0.2, abs=0.005)
    a, b = is_val("a", np.arange(1000), 0.5, 0), is_val("a", np.arange(1000), 0.5, 1)
    assert (a != b).any() and (a != is_val("b", np.arange(1000), 0.5, 0)).any()
    with pytest.raises(ValueError, match="fraction"):
        SplitConfig(1.0)
    with pytest.raises(ValueError, match="part"):
        SplitConfig(0.2, part="test")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    group=st.integers(1, 25),
    world=st.integers(1, 4),
    batch=st.integers(1, 9),
    seed=st.integers(0, 5),
    fraction=st.sampled_from([0.1, 0.3, 0.5]),
    shuffle=st.booleans(),
    resume=st.floats(0, 1),
)
def test_parts_are_exactly_once_disjoint_complete_over_ranks_and_resume(
    tmp_path_factory, sizes, group, world, batch, seed, fraction, shuffle, resume
):
    tmp = tmp_path_factory.mktemp("d")
    _write(tmp, sizes, group)
    kw = dict(batch_size=batch, shuffle=shuffle, shuffle_buffer=16, seed=seed, prefetch=0)
    parts = {}
    for part in ("train", "val"):
        split = SplitConfig(fraction, seed, part)
        seen, steps = [], set()
        for rank in range(world):
            loader = StreamLoader(str(tmp), SPEC, world_size=world, rank=rank, split=split, **kw)
            full = [_ids([b]) for b in loader]
            steps.add(len(full))
            acc = loader.epoch_accounting[0]
            assert acc.rows_in == acc.rows_out == loader.plan(0).rows
            cut = int(resume * len(full))
            a = StreamLoader(str(tmp), SPEC, world_size=world, rank=rank, split=split, **kw)
            it = iter(a)
            head = [_ids([next(it)]) for _ in range(cut)]
            state = a.state_dict()
            it.close()
            b = StreamLoader(str(tmp), SPEC, world_size=world, rank=rank, split=split, **kw)
            b.load_state_dict(state)
            assert head + [_ids([x]) for x in b] == full
            seen += [r for f in full for r in f]
        assert len(steps) == 1
        assert sorted(seen) == _expected(tmp, sizes, split)  # exactly once; same for every W
        parts[part] = seen
    assert not set(parts["train"]) & set(parts["val"])
    assert sorted(parts["train"] + parts["val"]) == list(range(sum(sizes)))


def test_state_from_another_split_is_refused(tmp_path):
    _write(tmp_path, [40], 8)
    a = StreamLoader(str(tmp_path), SPEC, batch_size=4, split=SplitConfig(0.2, 0, "train"))
    b = StreamLoader(str(tmp_path), SPEC, batch_size=4, split=SplitConfig(0.2, 0, "val"))
    with pytest.raises(Exception, match="split"):
        b.load_state_dict(a.state_dict())


def test_split_commutes_with_a_filter_in_every_format(tmp_path, fmt):
    n = 50
    t = pa.table({"id": np.arange(n, dtype=np.float64), "k": np.arange(n), "y": np.zeros(n)})
    path = tmp_path / f"d.{EXT[fmt]}"
    write(t, path, fmt)
    split = SplitConfig(0.4, 1, "val")
    spec = FeatureSpec(SPEC.label, SPEC.numeric, ignore=["k"])
    got = StreamLoader(str(path), spec, batch_size=7, split=split, filter=ds.field("k") >= 20)
    want = [i for i in np.flatnonzero(split.keep(path.name, np.arange(n))) if i >= 20]
    assert sorted(_ids(got)) == want


def test_unsplittable_csv_lines_fall_in_exactly_one_part(tmp_path):
    lines = ["id,y"] + [f"{i},0" for i in range(30)]
    lines[6] = "5,0,extra"  # data row 5 cannot be split
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    totals = []
    for part in ("train", "val"):
        split = SplitConfig(0.5, 0, part)
        loader = StreamLoader(str(tmp_path / "d.csv"), SPEC, batch_size=4, split=split)
        out = _ids(loader)
        acc = loader.epoch_accounting[0]
        assert acc.balanced() and acc.rows_out == len(out)
        totals.append((acc.rows_in, acc.quarantined_by_rule.get("parse", 0)))
    assert sum(t[0] for t in totals) == 30 and sum(t[1] for t in totals) == 1


def test_parquet_counts_need_no_read_and_are_cached_on_disk(tmp_path, monkeypatch):
    _write(tmp_path, [300, 200], 64)
    clear_memory()
    monkeypatch.setattr(Source, "read", lambda *a, **k: pytest.fail("counted by reading"))
    split = SplitConfig(0.25, 0, "val")
    loader = StreamLoader(str(tmp_path), SPEC, split=split)
    assert sum(loader.counts) == len(_expected(tmp_path, [300, 200], split))
    monkeypatch.undo()

    # A filter needs a counting pass; the cache file lets another process skip it.
    flt = ds.field("id") >= 100
    cache = tmp_path / "_counts.json"  # "_" prefix: not a data file of the source
    first = StreamLoader(str(tmp_path), SPEC, filter=flt, count_cache=str(cache))
    assert sum(first.counts) == 400 and len(CountCache(cache).entries) == len(first.pieces)
    clear_memory()
    monkeypatch.setattr(Source, "count_rows", lambda *a, **k: pytest.fail("counted again"))
    again = StreamLoader(str(tmp_path), SPEC, filter=flt, count_cache=str(cache))
    assert again.counts == first.counts
    monkeypatch.undo()
    # A rewritten file (new size and mtime) is counted again, not taken from the cache.
    _write(tmp_path, [300, 250], 64)
    clear_memory()
    assert sum(StreamLoader(str(tmp_path), SPEC, filter=flt, count_cache=str(cache)).counts) == 450
