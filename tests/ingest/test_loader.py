"""StreamLoader: quarantine and accounting per epoch and rank, resume, conversion details."""

import gc
import json
import logging
import os
import threading
import time
import warnings
import weakref
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.ingest.errors import SourceError, ValidationError
from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.spec import CategoricalFeature, FeatureSpec, Label, NumericFeature
from conveyor.ingest.validate import Accounting, Validator
from tests.ingest.conftest import EXT, sample_table, write

SPEC = FeatureSpec(
    label=Label("y", "binary", [0, 1]),
    numeric=[NumericFeature("id"), NumericFeature("x", min=-10.0, max=10.0)],
    categorical=[CategoricalFeature("c", vocab=["a", "b"])],
)
N = 120
# Rows planted with one problem each, and the rule that must catch it.
BAD = {7: "nan", 13: "null", 40: "range", 41: "unseen_class", 77: "nan", 118: "null"}


def bad_table() -> pa.Table:
    x = np.linspace(-1, 1, N)
    y = (np.arange(N) % 2).astype(np.int64)
    x[7], x[77], x[40] = np.nan, np.inf, 99.0
    y[41] = 5
    xs = pa.array(x, mask=np.isin(np.arange(N), [13]))
    c = pa.array([["a", "b", "zzz"][i % 3] if i != 118 else None for i in range(N)])
    return pa.table({"id": np.arange(N, dtype=np.float64), "x": xs, "c": c, "y": y})


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(bad_table(), path, row_group_size=32)
    return path


def ids(batches) -> list[int]:
    return [int(v) for b in batches for v in b.features[:, 0].tolist()]


@pytest.mark.parametrize("prefetch", [0, 3])
def test_quarantined_rows_are_counted_and_written_per_rank(data, tmp_path, prefetch):
    good = sorted(set(range(N)) - set(BAD))
    seen, quarantined, steps = [], [], set()
    for rank in range(3):
        qdir = tmp_path / "q"
        loader = StreamLoader(
            str(data), SPEC, batch_size=8, world_size=3, rank=rank, prefetch=prefetch,
            shuffle=True, shuffle_buffer=16, quarantine=str(qdir),
        )  # fmt: skip
        batches = list(loader)
        steps.add(len(batches))
        seen += ids(batches)
        acc = loader.epoch_accounting[0]
        assert acc.rows_in == loader.plan(0).rows == acc.rows_out + acc.rows_quarantined
        assert acc.rows_out == sum(len(b) for b in batches)
        (qfile,) = qdir.glob(f"epoch0000-rank{rank:05d}-from00000000.parquet") or [None]
        if acc.rows_quarantined:
            q = pq.read_table(qfile)
            assert q.num_rows == acc.rows_quarantined
            rules, counts = np.unique(q.column("_rule").to_pylist(), return_counts=True)
            assert dict(acc.quarantined_by_rule) == dict(zip(rules, counts, strict=True))
            quarantined += q.to_pylist()
    assert len(steps) == 1
    assert sorted(seen) == good
    got = {int(r["id"]): r for r in quarantined}
    assert sorted(got) == sorted(BAD)
    for i, rule in BAD.items():
        assert got[i]["_rule"] == rule and got[i]["_row"] == i
        original = bad_table().slice(i, 1).to_pylist()[0]
        row = {k: v for k, v in got[i].items() if not k.startswith("_")}
        assert row.keys() == original.keys()
        for k, v in original.items():  # unchanged, NaN included
            assert v == row[k] or (v != v and row[k] != row[k])


def test_accounting_is_per_epoch_and_survives_resume(data, tmp_path):
    kw = dict(batch_size=8, shuffle=True, shuffle_buffer=24, prefetch=2)
    qdir = tmp_path / "q"
    whole = StreamLoader(str(data), SPEC, **kw)
    full = [ids([b]) for b in whole]
    first = whole.epoch_accounting[0]
    assert first.rows_in == N and first.rows_quarantined == len(BAD)
    list(whole)  # epoch 1 starts from zero again
    assert whole.epoch_accounting[1].to_dict() == first.to_dict()

    cut = 6
    a = StreamLoader(str(data), SPEC, quarantine=str(qdir), **kw)
    it = iter(a)
    head = [ids([next(it)]) for _ in range(cut)]
    state = a.state_dict()
    it.close()
    b = StreamLoader(str(data), SPEC, quarantine=str(qdir), **kw)
    b.load_state_dict(state)
    tail = [ids([x]) for x in b]
    assert head + tail == full
    assert b.epoch_accounting[0].to_dict() == first.to_dict()
    # The read-ahead never wrote rows of batches that were not taken: the two files hold
    # every quarantined row exactly once.
    files = sorted(qdir.glob("epoch0000-*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).column("_row").to_pylist()]
    assert sorted(rows) == sorted(BAD)


def test_resume_after_the_last_batch_yields_nothing_then_next_epoch(data):
    a = StreamLoader(str(data), SPEC, batch_size=50)
    it = iter(a)
    taken = [next(it) for _ in range(len(a))]
    state = a.state_dict()
    it.close()
    b = StreamLoader(str(data), SPEC, batch_size=50)
    b.load_state_dict(state)
    assert list(b) == [] and b.epoch == 1
    assert ids(b) == ids(taken)  # epoch 1, unshuffled: the same rows again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("replace", "other files"),  # b.parquet gone, 0.parquet of as many rows sorts first
        ("add", "taken over 2 files, this loader reads 3"),  # an empty file more
        ("regroup", "taken over 2 pieces .*, this loader has 3"),
        ("recount", "other row counts"),  # rows moved from b to a: the same total
    ],
)
def test_resume_refuses_a_state_taken_over_other_data_with_as_many_rows(tmp_path, change, message):
    """A state names the files (relative to the source root) and each piece's row count: a
    state taken over other data with the same total rows is refused (it would repeat and skip
    rows), while a copy of the same files elsewhere, and a state saved before the fingerprint
    existed, resume."""
    from conveyor.ingest.errors import LoaderStateError

    def write_rows(path, start: int, n: int, group: int = 8) -> None:
        ids = np.arange(start, start + n, dtype=np.float64)
        c, y = pa.array(["a"] * n, pa.string()), np.arange(n) % 2
        table = pa.table({"id": ids, "x": np.zeros(n), "c": c, "y": y})
        pq.write_table(table, path, row_group_size=group)

    data, copy = tmp_path / "data", tmp_path / "copy"
    for root in (data, copy):
        root.mkdir()
        write_rows(root / "a.parquet", 0, 8)
        write_rows(root / "b.parquet", 100, 8)
    kw = dict(batch_size=4, prefetch=0)
    first = StreamLoader(str(data), SPEC, **kw)
    it = iter(first)
    head = ids([next(it)])
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint keeps it
    it.close()
    resumed = StreamLoader(str(copy), SPEC, **kw)
    resumed.load_state_dict(state)
    assert head + ids(resumed) == ids(StreamLoader(str(data), SPEC, **kw))
    old = {k: v for k, v in state.items() if k != "data"}
    StreamLoader(str(data), SPEC, **kw).load_state_dict(old)

    if change == "replace":
        (data / "b.parquet").unlink()
        write_rows(data / "0.parquet", 500, 8)
    elif change == "add":
        write_rows(data / "c.parquet", 900, 0)
    elif change == "regroup":
        write_rows(data / "b.parquet", 100, 8, group=4)
    else:
        write_rows(data / "a.parquet", 0, 12, group=12)
        write_rows(data / "b.parquet", 100, 4)
    changed = StreamLoader(str(data), SPEC, **kw)
    assert sum(changed.counts) == 16
    with pytest.raises(LoaderStateError, match=message):
        changed.load_state_dict(state)


def test_reject_policy_raises_naming_file_row_column(data):
    spec = SPEC.with_policies({"nan": "reject"})
    with pytest.raises(ValidationError) as info:
        list(StreamLoader(str(data), spec, batch_size=8, prefetch=2))
    err = info.value
    assert (err.file, err.row, err.column, err.rule) == (str(data), 7, "x", "nan")
    assert "d.parquet: row 7, column 'x': rule 'nan' rejected, value nan" in str(err)


def test_batches_are_writable_tensors_without_warnings(data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = next(iter(StreamLoader(str(data), SPEC, batch_size=4, prefetch=0)))
    assert batch.features.dtype == torch.float32 and batch.features.shape == (4, 2)
    assert batch.categorical.dtype == torch.int64 and batch.label.dtype == torch.int64
    assert batch.categorical[:, 0].tolist() == [1, 2, 0, 1]  # a, b, unseen -> OOV 0, a
    batch.label += 1  # a writable buffer of the batch's own
    batch.features[0, 0] = -1


def test_unseen_category_impute_is_counted(data):
    loader = StreamLoader(str(data), SPEC, batch_size=16)
    list(loader)
    # Rows with c == "zzz" (every third) map to the OOV id; the ones quarantined for another
    # reason are not counted as imputed.
    zzz = [i for i in range(2, N, 3) if i not in BAD]
    assert loader.epoch_accounting[0].imputed_by_rule["unseen_category"] == len(zzz)


def test_csv_lines_that_cannot_be_split_are_counted_by_the_loader(tmp_path):
    path = tmp_path / "r.csv"
    lines = ["id,x,c,y"] + [f"{i},0.5,a,{i % 2}" for i in range(10)]
    lines.insert(4, "99,1,a")  # ragged, in the middle
    lines.append("98,1,a,1,EXTRA")  # ragged, after the last row
    path.write_text("\n".join(lines) + "\n")
    for world in (1, 2):
        total = 0
        for rank in range(world):
            loader = StreamLoader(str(path), SPEC, batch_size=3, world_size=world, rank=rank)
            list(loader)
            acc = loader.epoch_accounting[0]
            assert acc.balanced()
            total += acc.rows_in
            assert acc.rows_quarantined == acc.quarantined_by_rule["parse"]
        assert total == 12


def test_pinned_spec_types_beat_csv_inference(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("id,x,c,y\n0,oops,a,0\n1,2.5,b,1\n2,3.5,a,0\n")
    loader = StreamLoader(str(path), SPEC, batch_size=8)
    assert loader.source.schema.field("x").type == pa.float64()
    (batch,) = list(loader)
    assert batch.features[:, 0].tolist() == [1.0, 2.0]
    acc = loader.epoch_accounting[0]
    assert acc.rows_quarantined == acc.quarantined_by_rule["type"] == 1


def test_text_file_with_no_splittable_row_is_reported(tmp_path):
    (tmp_path / "a.csv").write_text("id,x,c,y\n0,0.5,a,0\n1,0.5,b,1\n")
    (tmp_path / "b.csv").write_text("id,x,c,y\n2,0.5\n3\n")
    # A handler of its own: the CLI's logging set-up (other tests) stops propagation to root.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("conveyor.ingest")
    logger.addHandler(handler)
    try:
        loader = StreamLoader(str(tmp_path), SPEC, batch_size=4)
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert any(m.startswith(f"{tmp_path / 'b.csv'}: none of its 2 lines splits") for m in messages)
    assert ids(loader) == [0, 1]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 90),
    bad=st.dictionaries(st.integers(0, 89), st.sampled_from(["nan", "inf", "null", "range"])),
    group=st.integers(1, 40),
    world=st.integers(1, 3),
    batch=st.integers(1, 12),
    shuffle=st.booleans(),
    prefetch=st.sampled_from([0, 2]),
)
def test_loader_accounts_for_random_bad_rows(
    tmp_path_factory, n, bad, group, world, batch, shuffle, prefetch
):
    bad = {i: k for i, k in bad.items() if i < n}
    x = np.zeros(n)
    nulls = np.zeros(n, dtype=bool)
    for i, kind in bad.items():
        if kind == "null":
            nulls[i] = True
        else:
            x[i] = {"nan": np.nan, "inf": np.inf, "range": 11.0}[kind]
    tmp = tmp_path_factory.mktemp("lb")
    table = pa.table(
        {
            "id": np.arange(n, dtype=np.float64),
            "x": pa.array(x, mask=nulls),
            "c": pa.array(["a"] * n),
            "y": np.zeros(n, dtype=np.int64),
        }
    )
    pq.write_table(table, tmp / "d.parquet", row_group_size=group)
    out, quarantined, total = [], [], Accounting()
    for rank in range(world):
        loader = StreamLoader(
            str(tmp / "d.parquet"), SPEC, batch_size=batch, world_size=world, rank=rank,
            shuffle=shuffle, shuffle_buffer=2 * batch, prefetch=prefetch,
            quarantine=str(tmp / "q"),
        )  # fmt: skip
        out += ids(loader)
        acc = loader.epoch_accounting[0]
        assert acc.balanced() and acc.rows_in == loader.plan(0).rows
        total.merge(acc)
    for f in (tmp / "q").glob("*.parquet"):
        quarantined += pq.read_table(f).column("_row").to_pylist()
    assert sorted(out) == [i for i in range(n) if i not in bad]
    assert sorted(quarantined) == sorted(bad)
    assert (total.rows_in, total.rows_quarantined) == (n, len(bad))
    kinds = {"nan": "nan", "inf": "nan", "null": "null", "range": "range"}
    assert total.quarantined_by_rule == Counter(kinds[k] for k in bad.values())


@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_text_file_that_changes_after_counting_is_named(tmp_path, change):
    path = tmp_path / "d.csv"
    lines = ["id,x,c,y"] + [f"{i},0.5,a,0" for i in range(20)]
    path.write_text("\n".join(lines) + "\n")
    loader = StreamLoader(str(path), SPEC, batch_size=4, prefetch=2)
    lines = lines[:-5] if change == "shorter" else [*lines, "20,0.5,a,0"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=rf"{path}: yields \d+ rows where 20 were counted"):
        list(loader)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "ipc"])
def test_round_trip_to_torch_every_format(tmp_path, fmt):
    table = sample_table(50)
    write(table, tmp_path / f"d.{EXT[fmt]}", fmt)
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature("x"), NumericFeature("k")],
        categorical=[CategoricalFeature("c", vocab=["b", "a"])],
    )
    loader = StreamLoader(str(tmp_path / f"d.{EXT[fmt]}"), spec, batch_size=16, prefetch=2)
    batches = list(loader)
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    feats = torch.cat([b.features for b in batches]).numpy()
    np.testing.assert_array_equal(feats[:, 0], table.column("x").to_numpy().astype(np.float32))
    np.testing.assert_array_equal(feats[:, 1], table.column("k").to_numpy().astype(np.float32))
    cats = torch.cat([b.categorical for b in batches])[:, 0].tolist()
    assert cats == [{"b": 1, "a": 2}.get(v, 0) for v in table.column("c").to_pylist()]
    assert torch.cat([b.label for b in batches]).tolist() == table.column("y").to_pylist()
    assert loader.epoch_accounting[0].to_dict()["rows_out"] == 50


def test_accounting_resets_per_epoch_with_a_running_total_and_one_warning(data, caplog):
    loader = StreamLoader(str(data), SPEC, batch_size=8, shuffle=True, shuffle_buffer=24)
    # Directly on the logger: a CLI test may have stopped "conveyor" propagating to the root.
    logger = logging.getLogger("conveyor.ingest")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="conveyor.ingest"):
        for epoch in range(3):
            loader.set_epoch(epoch)
            list(loader)
            assert loader.accounting.rows_in == N  # this epoch only
            assert loader.validator.accounting.rows_in <= N  # the producer's counts, per epoch
        loader.set_epoch(0)  # a validation pass re-reads epoch 0
        list(loader)
    logger.removeHandler(caplog.handler)
    assert loader.total_accounting.rows_in == 4 * N
    assert loader.total_accounting.rows_quarantined == 4 * len(BAD)
    # The handler sits on the root too (caplog) when "conveyor" propagates: count a record once.
    records = {id(r): r for r in caplog.records}.values()
    warnings_ = [r for r in records if "quarantined" in r.getMessage()]
    assert len(warnings_) == 1 and f"{len(BAD)} of {N} rows" in warnings_[0].getMessage()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bad=st.sets(st.integers(0, N - 1), max_size=20),
    world=st.integers(1, 3),
    batch=st.integers(1, 12),
    cut=st.floats(0, 1),
    data=st.data(),
)
def test_accounting_balances_per_epoch_and_rank_across_resume(
    tmp_path_factory, bad, world, batch, cut, data
):
    tmp = tmp_path_factory.mktemp("acc")
    x = np.linspace(-1, 1, N)
    x[sorted(bad)] = np.nan
    pq.write_table(pa.table({"id": np.arange(N, dtype=np.float64), "x": x,
                             "c": ["a"] * N, "y": np.arange(N) % 2}),
                   tmp / "d.parquet", row_group_size=17)  # fmt: skip
    kw = dict(batch_size=batch, world_size=world, shuffle=True, shuffle_buffer=20,
              prefetch=data.draw(st.sampled_from([0, 2])))  # fmt: skip
    quarantined = {0: 0, 1: 0}
    for rank in range(world):
        whole = StreamLoader(str(tmp), SPEC, rank=rank, **kw)
        list(whole), list(whole)  # epochs 0 and 1
        for e in (0, 1):
            acc = whole.epoch_accounting[e]
            assert acc.balanced() and acc.rows_in == whole.plan(e).rows
            quarantined[e] += acc.rows_quarantined
        total = whole.total_accounting
        assert total.rows_in == sum(whole.epoch_accounting[e].rows_in for e in (0, 1))
        assert total.balanced()
        # Resume in the middle of epoch 1: the same per-epoch and total counts.
        a = StreamLoader(str(tmp), SPEC, rank=rank, **kw)
        list(a)
        it = iter(a)
        for _ in range(int(cut * len(a))):
            next(it)
        state = a.state_dict()
        it.close()
        b = StreamLoader(str(tmp), SPEC, rank=rank, **kw)
        b.load_state_dict(state)
        list(b)
        assert b.epoch_accounting[1].to_dict() == whole.epoch_accounting[1].to_dict()
        assert b.total_accounting.to_dict() == total.to_dict()
    assert quarantined == {0: len(bad), 1: len(bad)}


@pytest.mark.parametrize(
    "policies",
    [{}, {"null": "impute", "nan": "impute", "range": "impute"}],
    ids=["quarantine", "impute"],
)
def test_rows_checked_alone_equal_whole_chunks_checked(data, tmp_path, monkeypatch, policies):
    """The loader validates only a chunk's suspect rows; checking every chunk whole (the
    reference) yields the same batches, accounting and quarantine files."""
    spec = FeatureSpec(
        label=SPEC.label,
        numeric=[
            NumericFeature("id", impute=0.0),
            NumericFeature("x", min=-10.0, max=10.0, impute=0.5),
        ],
        categorical=SPEC.categorical,
        policies=policies,
    )

    def run(name: str) -> tuple[list, dict, list]:
        loader = StreamLoader(
            str(data), spec, batch_size=8, shuffle=True, shuffle_buffer=48,
            quarantine=str(tmp_path / name), prefetch=0,
        )  # fmt: skip
        batches = [(b.features, b.categorical, b.label) for b in loader]
        (qfile,) = (tmp_path / name).glob("*.parquet")
        rows = [repr(r) for r in pq.read_table(qfile).to_pylist()]  # repr: NaN equals NaN
        return batches, loader.epoch_accounting[0].to_dict(), rows

    checked_alone = run("alone")
    monkeypatch.setattr(Validator, "suspect_rows", lambda self, chunk: None)
    whole = run("whole")
    assert checked_alone[1] == whole[1] and checked_alone[2] == whole[2]
    assert checked_alone[1]["rows_quarantined"] > 0
    assert len(checked_alone[0]) == len(whole[0])
    for a, b in zip(checked_alone[0], whole[0], strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def _ingest_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("conveyor-ingest")]


def test_read_ahead_starts_the_next_epoch_early_and_changes_no_batch(data, monkeypatch):
    def loader() -> StreamLoader:
        return StreamLoader(str(data), SPEC, batch_size=8, shuffle=True, shuffle_buffer=24)

    def epoch_batches(ld: StreamLoader, ahead: int | None) -> list:
        if ahead is not None:
            ld.read_ahead(ahead)
        return [(b.features, b.categorical, b.label) for b in ld]

    plain, early = loader(), loader()
    opened: list[tuple[int, int]] = []
    open_windows = StreamLoader._open_windows

    def spy(self, plan, first_window, epoch):
        opened.append((epoch, first_window))
        return open_windows(self, plan, first_window, epoch)

    monkeypatch.setattr(StreamLoader, "_open_windows", spy)
    for epoch in range(3):
        plain.set_epoch(epoch)
        want = epoch_batches(plain, None)
        early.set_epoch(epoch)
        opened.clear()
        got = epoch_batches(early, epoch + 1 if epoch < 2 else None)
        # Epoch 0 opens its own windows; every later one was opened during the epoch before.
        assert opened == ([(0, 0), (1, 0)] if epoch == 0 else [(2, 0)] if epoch == 1 else [])
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert early.accounting.to_dict() == plain.accounting.to_dict()
    assert early._ahead is None and not _ingest_threads()


def test_read_ahead_of_another_epoch_is_dropped(data):
    ref = StreamLoader(str(data), SPEC, batch_size=8, shuffle=True, shuffle_buffer=24)
    ref.set_epoch(5)
    want = [b.features for b in ref]
    ld = StreamLoader(str(data), SPEC, batch_size=8, shuffle=True, shuffle_buffer=24)
    ld.read_ahead(1)
    list(ld)
    assert ld._ahead is not None and ld._ahead[0] == 1
    ld.set_epoch(5)  # not the announced epoch: what was read ahead is not used
    got = [b.features for b in ld]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    state = ld.state_dict()  # epoch 6, batch 0
    it = iter(ld)
    next(it)
    it.close()
    ld.read_ahead(7)
    list(ld)  # epoch 6 from its second batch; epoch 7 is read ahead at its last window
    assert ld._ahead is not None and ld._ahead[0] == 7
    ld.load_state_dict(state)  # a new position drops it
    assert ld._ahead is None and not _ingest_threads()
    ld.read_ahead(8)
    list(ld)
    assert ld._ahead is not None
    ld.close()
    assert ld._ahead is None and not _ingest_threads()


def test_a_loader_used_as_a_context_manager_stops_its_read_ahead(data):
    # Stopped and joined on leaving the block, not when the loader is collected.
    with StreamLoader(str(data), SPEC, batch_size=8) as ld:
        ld.read_ahead(1)
        list(ld)
        assert ld._ahead is not None and _ingest_threads()
    assert ld._ahead is None and not _ingest_threads()


def _open_fds(path) -> list[str] | None:
    """This process's descriptors open on ``path`` (None where /proc/self/fd is missing)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor, among others)
            pass
    return found


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_a_dropped_loader_stops_its_read_ahead(tmp_path, fmt, capfd):
    # Parquet is read a row group at a time (no descriptor kept between chunks); IPC in
    # small record batches keeps its file open while the next epoch is read ahead.
    from conveyor.ingest.source import Source

    path = tmp_path / f"d.{EXT[fmt]}"
    n = 400
    i = np.arange(n)
    c = pa.array([["a", "b"][v % 2] for v in i])
    table = pa.table({"id": i.astype(np.float64), "x": np.linspace(-1, 1, n), "c": c, "y": i % 2})
    write(table, path, fmt)
    source = Source(str(path), types=SPEC.declared_types(), batch_rows=16)
    ld = StreamLoader(source, SPEC, batch_size=8, shuffle=True, shuffle_buffer=16, prefetch=4)
    ld.read_ahead(1)
    assert sum(1 for _ in ld) == n // 8
    assert ld._ahead is not None and _ingest_threads()
    if fmt == "ipc" and _open_fds(path) is not None:
        # The read-ahead opens the file on its own thread, maybe not yet: wait for it (else
        # the check after the drop could not fail).
        deadline = time.monotonic() + 10.0
        while not _open_fds(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _open_fds(path)
    del source
    alive = weakref.ref(ld)
    del ld  # no close(), no `with`
    gc.collect()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and (_ingest_threads() or _open_fds(path)):
        time.sleep(0.02)
    assert not _ingest_threads()
    assert not _open_fds(path)
    gc.collect()
    assert alive() is None
    err = capfd.readouterr().err  # a thread that found the loader gone ended quietly
    assert "Traceback" not in err and "Exception ignored" not in err


def test_prefetch_close_is_bounded_when_the_source_is_stuck() -> None:
    # What the exit hook relies on: a read stuck on a remote filesystem must not
    # keep the process from exiting.
    import threading
    import time

    from conveyor.ingest.loader import _Prefetch

    release = threading.Event()

    def stuck():
        yield 1
        release.wait(30)
        yield 2

    prefetch = _Prefetch(stuck(), depth=1, name="test-stuck")
    assert next(prefetch) == 1
    t0 = time.monotonic()
    prefetch.close(timeout=0.2)
    assert time.monotonic() - t0 < 2.0
    assert prefetch._thread.is_alive()  # given up on, not joined
    release.set()
    prefetch.close()  # unbounded: joins once the source moves
    assert not prefetch._thread.is_alive()


def test_values_beyond_float32_are_quarantined_as_range_not_inf(tmp_path):
    """A finite float64 that would be inf as float32 (feature, regression label, weight) is a
    ``range`` row in the loader and in validation alike; float32's largest value passes."""
    from conveyor.ingest.scan import run_scan
    from conveyor.ingest.source import Source
    from conveyor.ingest.validate import FLOAT32_OVERFLOW

    top = float(np.finfo(np.float32).max)
    x = np.array([1.0, 2.0, 1e300, 3.0, top, -FLOAT32_OVERFLOW])
    y = np.array([0.0, 1.0, 2.0, 5e40, -top, 4.0])
    w = np.array([1.0, 1e39, 1.0, 1.0, 1.0, 1.0])
    pq.write_table(pa.table({"x": x, "y": y, "w": w}), tmp_path / "d.parquet")
    spec = FeatureSpec(
        label=Label("y", "regression", None), numeric=[NumericFeature("x")], weight="w"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning either
        loader = StreamLoader(
            str(tmp_path / "d.parquet"), spec, batch_size=8, prefetch=0, quarantine=str(tmp_path)
        )
        (batch,) = list(loader)
    assert batch.features[:, 0].tolist() == [1.0, top]
    assert batch.label.tolist() == [0.0, -top] and batch.weight.tolist() == [1.0, 1.0]
    acc = loader.epoch_accounting[0]
    assert (acc.rows_in, acc.rows_out, acc.rows_quarantined) == (6, 2, 4) and acc.balanced()
    assert acc.quarantined_by_rule == {"range": 4}
    (qfile,) = tmp_path.glob("epoch0000-*.parquet")
    q = pq.read_table(qfile).to_pydict()
    assert q["_row"] == [1, 2, 3, 5] and q["_column"] == ["w", "x", "y", "x"]
    assert all("float32" in reason for reason in q["_reason"])
    result = run_scan(Source(str(tmp_path / "d.parquet")), spec, quarantine_path=tmp_path / "v.pq")
    assert result.accounting.to_dict()["quarantined_by_rule"] == {"range": 4}
