"""Exactly-once sharding and resume, as properties over random shapes."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.shard import plan_rank
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
        for s in plan.segments:
            got.extend(range(starts[s.piece] + s.start, starts[s.piece] + s.stop))
    assert len(steps) == 1
    assert len(got) == len(set(got))
    if drop_last:
        assert len(got) == total - total % (world * batch)
    else:
        assert sorted(got) == list(range(total))


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
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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
        full = [
            b.features[:, 0].long().tolist() for b in StreamLoader(str(tmp), SPEC, rank=rank, **kw)
        ]
        steps.add(len(full))
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
