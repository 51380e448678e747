"""Exactly-once sharding and resume, as properties over random shapes."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.shard import batch_bounds, plan_rank
from conveyor.ingest.spec import FeatureSpec, Label, NumericFeature

SPEC = FeatureSpec(label=Label("y", "regression"), numeric=[NumericFeature("id")])


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    world=st.integers(1, 5),
    batch=st.integers(1, 16),
    seed=st.integers(0, 3),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
)
def test_plan_covers_every_row_once_with_equal_steps(
    counts, world, batch, seed, shuffle, drop_last
):
    total = sum(counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    got, steps = [], set()
    for rank in range(world):
        plan = plan_rank(
            counts,
            world_size=world,
            rank=rank,
            batch_size=batch,
            shuffle=shuffle,
            seed=seed,
            epoch=1,
            drop_last=drop_last,
        )
        steps.add(plan.steps)
        assert plan.rows <= plan.steps * batch
        sizes = np.diff(plan.bounds(batch))
        assert len(sizes) == plan.steps and sizes.sum() == plan.rows
        assert (sizes <= batch).all() and (sizes[:-2] == batch).all()
        if drop_last:
            assert (sizes == batch).all()
        if plan.rows >= plan.steps:  # else a rank has fewer rows than steps (see shard)
            assert (sizes > 0).all()
        for s in plan.segments:
            got.extend(range(starts[s.piece] + s.start, starts[s.piece] + s.stop))
    assert len(steps) == 1
    assert len(got) == len(set(got))
    if drop_last:
        assert len(got) == total - total % (world * batch)
    else:
        assert sorted(got) == list(range(total))


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 400), world=st.integers(1, 8), batch=st.integers(1, 40))
def test_no_empty_batch_unless_a_rank_has_fewer_rows_than_steps(total, world, batch):
    shares = [plan_rank([total], world_size=world, rank=r, batch_size=batch, shuffle=False,
                        seed=0, epoch=0) for r in range(world)]  # fmt: skip
    for plan in shares:
        sizes = np.diff(plan.bounds(batch))
        short = (batch == 1 and total % world > 0) or total < world
        if plan.rows < plan.steps:
            assert short, "only B == 1 with a remainder, or N < W, leaves a rank short"
            assert (sizes == 0).sum() == plan.steps - plan.rows
        else:
            assert (sizes > 0).all()


def test_remainder_case_that_used_to_give_an_empty_batch():
    # N // W = 8 is a multiple of B = 4 and N % W = 1: rank 1 has 8 rows for 3 steps.
    plans = [plan_rank([17], world_size=2, rank=r, batch_size=4, shuffle=False, seed=0, epoch=0)
             for r in range(2)]  # fmt: skip
    assert [p.steps for p in plans] == [3, 3]
    assert np.diff(plans[0].bounds(4)).tolist() == [4, 4, 1]
    assert np.diff(plans[1].bounds(4)).tolist() == [4, 2, 2]
    assert batch_bounds(2, 3, 1).tolist() == [0, 1, 2, 2]  # B == 1: the short rank's last step


def _write(tmp, sizes, group):
    ids = np.arange(sum(sizes), dtype=np.float64)
    start = 0
    for i, n in enumerate(sizes):
        part = ids[start : start + n]
        pq.write_table(
            pa.table({"id": part, "y": part}), tmp / f"p{i:02d}.parquet", row_group_size=group
        )
        start += n


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    group=st.integers(1, 25),
    world=st.integers(1, 4),
    batch=st.integers(1, 9),
    buffer=st.integers(1, 40),
    seed=st.integers(0, 5),
    shuffle=st.booleans(),
    resume=st.floats(0, 1),
    data=st.data(),
)
def test_loader_exactly_once_across_ranks_and_resume(
    tmp_path_factory, sizes, group, world, batch, buffer, seed, shuffle, resume, data
):
    tmp = tmp_path_factory.mktemp("d")
    _write(tmp, sizes, group)
    kw = dict(
        batch_size=batch,
        shuffle=shuffle,
        shuffle_buffer=buffer,
        seed=seed,
        world_size=world,
        prefetch=data.draw(st.sampled_from([0, 2])),
    )
    seen, steps = [], set()
    for rank in range(world):
        loader = StreamLoader(str(tmp), SPEC, rank=rank, **kw)
        full = [b.features[:, 0].long().tolist() for b in loader]
        steps.add(len(full))
        if loader.plan(0).rows >= len(full):
            assert all(full), "no empty batch when the rank has at least one row per step"
        acc = loader.epoch_accounting[0]
        assert acc.rows_in == acc.rows_out == loader.plan(0).rows and acc.rows_quarantined == 0
        # Resume from a state taken after `cut` batches: the rest matches exactly.
        cut = int(resume * len(full))
        first = StreamLoader(str(tmp), SPEC, rank=rank, **kw)
        it = iter(first)
        head = [next(it).features[:, 0].long().tolist() for _ in range(cut)]
        state = first.state_dict()
        it.close()
        second = StreamLoader(str(tmp), SPEC, rank=rank, **kw)
        second.load_state_dict(state)
        tail = [b.features[:, 0].long().tolist() for b in second]
        assert head + tail == full
        seen.extend(r for b in full for r in b)
    assert len(steps) == 1
    assert sorted(seen) == list(range(sum(sizes)))


def test_next_epoch_reshuffles_and_still_covers(tmp_path):
    _write(tmp_path, [30, 30], 7)
    loader = StreamLoader(str(tmp_path), SPEC, batch_size=8, shuffle=True, shuffle_buffer=16)
    e0 = [r for b in loader for r in b.features[:, 0].long().tolist()]
    e1 = [r for b in loader for r in b.features[:, 0].long().tolist()]
    assert sorted(e0) == sorted(e1) == list(range(60)) and e0 != e1
    assert loader.state_dict()["epoch"] == 2
