"""The model repository contract: versions, config.json, and a program that needs no conveyor."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from trainer_fixtures import tabular, write_spec

from conveyor.ingest.loader import StreamLoader
from conveyor.ingest.spec import FeatureSpec
from conveyor.trainer.errors import ExportError
from conveyor.trainer.export import (
    _publish,
    category_key,
    existing_versions,
    export_version,
    model_config,
)
from conveyor.trainer.model import build_model

# Runs in a fresh interpreter: only torch and json, then proves conveyor was never imported.
_CLIENT = textwrap.dedent(
    """
    import json, sys, torch
    version, rows = sys.argv[1], json.loads(sys.stdin.read())
    cfg = json.load(open(version + "/config.json"))
    model = torch.jit.load(version + "/model.pt")
    args = []
    for spec in cfg["inputs"]:
        if spec["datatype"] == "BYTES":
            args.append([v for row in rows[spec["name"]] for v in row])
        else:
            args.append(torch.tensor(rows[spec["name"]], dtype=torch.float32))
    out = model(*args)
    out = out if isinstance(out, tuple) else (out,)
    assert not any(m.startswith("conveyor") for m in sys.modules), "conveyor was imported"
    assert not any(t.requires_grad for t in out), "serving builds autograd graphs"
    print(json.dumps({o["name"]: t.tolist() for o, t in zip(cfg["outputs"], out)}))
    """
)


def _serve(version: Path, rows: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT, str(version)],
        input=json.dumps(rows),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def _raw_rows(table, spec: FeatureSpec) -> dict:
    return {
        "numeric": [[row[n] for n in spec.numeric_names] for row in table.to_pylist()],
        "categorical": [
            [category_key(row[n]) for n in spec.categorical_names] for row in table.to_pylist()
        ],
    }


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_exported_program_equals_the_training_model(tmp_path: Path, task: str) -> None:
    table = tabular(64, seed=3, task=task)
    data = tmp_path / "d.parquet"
    pq.write_table(table, data)
    spec = FeatureSpec.load(write_spec(tmp_path, table, task))
    stats = {
        "numeric": {n: {"mean": 1.0, "std": 3.0} for n in spec.numeric_names},
        "label": {"mean": 100.0, "std": 3.0},
    }
    torch.manual_seed(0)
    model = build_model(spec, stats, hidden=(8,)).eval()
    version = export_version(tmp_path / "repo", "m", model, spec, stats, {"note": "x"})
    assert version == tmp_path / "repo" / "m" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "config.json",
        "metrics.json",
        "model.pt",
        "spec.json",
        "stats.json",
    ]
    served = _serve(version, _raw_rows(table, spec))
    # The training model on the reader's batches of the same rows (ids, not strings).
    batch = next(iter(StreamLoader(str(data), spec, batch_size=64, prefetch=0)))
    with torch.no_grad():
        logits = model(batch.features, batch.categorical)
    if task == "regression":
        expected = {"prediction": logits * 3.0 + 100.0}
    else:
        prob = torch.sigmoid(logits) if task == "binary" else torch.softmax(logits, 1)
        expected = {"probability": prob, "logits": logits}
    assert served.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(torch.tensor(served[name]), tensor, atol=1e-5, rtol=1e-5)
    assert (batch.categorical[:, 0] == 0).any()  # "blue" is out of vocabulary: id 0 both ways


def test_the_program_imputes_what_the_reader_imputes(tmp_path: Path) -> None:
    # Under impute policies the reader fed the model the impute values for an
    # out-of-range or NaN number and an unseen category; the program fed it the raw
    # value (a = 100: 0.028 served against 0.664 trained, in the review's run).
    from conveyor.ingest.spec import CategoricalFeature, Label, NumericFeature

    rows = {"a": [1.0, 100.0, float("nan"), -7.0, 3.0], "b": ["x", "y", "x", "zz", "y"]}
    table = pa.table({**rows, "y": [0, 1, 0, 1, 0]})
    data = tmp_path / "d.parquet"
    pq.write_table(table, data)
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature("a", max=10.0, impute=5.0)],  # min from the profile: 1.0
        categorical=[CategoricalFeature("b", vocab=["x", "y"], impute="y")],
        policies={"range": "impute", "nan": "impute"},
    )
    stats = {"numeric": {"a": {"mean": 2.0, "std": 1.0, "count": 4, "min": 1.0, "max": 100.0}}}
    torch.manual_seed(0)
    model = build_model(spec, stats, hidden=(4,)).eval()
    version = export_version(tmp_path / "repo", "m", model, spec, stats, {})
    served = _serve(
        version, {"numeric": [[a] for a in rows["a"]], "categorical": [[b] for b in rows["b"]]}
    )
    loader = StreamLoader(str(data), spec, batch_size=8, prefetch=0, ranges={"a": (1.0, 100.0)})
    batch = next(iter(loader))
    assert batch.features[:, 0].tolist() == [1.0, 5.0, 5.0, 5.0, 3.0]  # 100 > max, NaN, -7 < min
    assert batch.categorical[:, 0].tolist() == [1, 2, 1, 2, 2]  # "zz" -> the impute "y"
    with torch.no_grad():
        want = torch.sigmoid(model(batch.features, batch.categorical))
    torch.testing.assert_close(torch.tensor(served["probability"]), want, atol=1e-6, rtol=1e-6)


def test_a_value_at_a_range_bound_is_served_as_trained(tmp_path: Path) -> None:
    # The reader compares the column's float64 values with the bounds; the program gets
    # FP32 inputs, and float32(0.3) > 0.3: x = 0.3 exactly was trained as 0.3 and served
    # as the impute value (the review's run: 0.370 served against 0.641 trained).
    from conveyor.ingest.spec import Label, NumericFeature

    rows = {"a": [0.3, 0.29, 0.1, 0.0, 0.5]}
    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({**rows, "y": [0, 1, 0, 1, 0]}), data)
    spec = FeatureSpec(
        label=Label("y", "binary", [0, 1]),
        numeric=[NumericFeature("a", min=0.1, max=0.3, impute=5.0)],
        policies={"range": "impute"},
    )
    stats = {"numeric": {"a": {"mean": 0.2, "std": 0.1, "count": 5, "min": 0.0, "max": 0.5}}}
    torch.manual_seed(0)
    model = build_model(spec, stats, hidden=(4,)).eval()
    version = export_version(tmp_path / "repo", "m", model, spec, stats, {})
    served = _serve(version, {"numeric": [[a] for a in rows["a"]], "categorical": []})
    batch = next(iter(StreamLoader(str(data), spec, batch_size=8, prefetch=0)))
    assert batch.features[:, 0].tolist() == pytest.approx([0.3, 0.29, 0.1, 5.0, 5.0])
    with torch.no_grad():
        want = torch.sigmoid(model(batch.features, batch.categorical))
    torch.testing.assert_close(torch.tensor(served["probability"]), want, atol=1e-6, rtol=1e-6)


def test_config_json_contract(tmp_path: Path) -> None:
    table = tabular(8)
    spec = FeatureSpec.load(write_spec(tmp_path, table))
    cfg = model_config(spec, "fraud", max_batch_size=256, source_types={"x0": "double"})
    assert cfg["name"] == "fraud" and cfg["platform"] == "torchscript"
    assert cfg["max_batch_size"] == 256 and cfg["instance_count"] == 1
    assert cfg["inputs"] == [
        {"name": "numeric", "datatype": "FP32", "shape": [3], "columns": ["x0", "x1", "x2"]},
        {
            "name": "categorical",
            "datatype": "BYTES",
            "shape": [2],
            "columns": spec.categorical_names,
        },
    ]
    assert cfg["outputs"] == [
        {"name": "probability", "datatype": "FP32", "shape": [1]},
        {"name": "logits", "datatype": "FP32", "shape": [1]},
    ]
    assert cfg["labels"] == ["0", "1"] and cfg["parameters"]["positive_class"] == "1"
    batching = cfg["dynamic_batching"]
    assert batching["preferred_batch_size"] == [16, 64, 256]
    assert set(batching) == {
        "max_queue_delay_microseconds",
        "preferred_batch_size",
        "max_queue_size",
        "priority_levels",
        "default_priority_level",
    }
    assert [(f["name"], f["input"], f["index"]) for f in cfg["features"]] == [
        ("x0", "numeric", 0),
        ("x1", "numeric", 1),
        ("x2", "numeric", 2),
        ("color", "categorical", 0),
        ("shop", "categorical", 1),
    ]
    assert cfg["features"][0]["source_type"] == "double"


def test_versions_increase_and_never_overwrite(tmp_path: Path) -> None:
    table = tabular(8)
    spec = FeatureSpec.load(write_spec(tmp_path, table))
    stats = {"numeric": {n: {"mean": 0.0, "std": 1.0} for n in spec.numeric_names}}
    model = build_model(spec, stats, hidden=(4,))
    repo = tmp_path / "repo"
    (repo / "m" / "7").mkdir(parents=True)
    (repo / "m" / "7" / "keep.txt").write_text("an older version")
    (repo / "m" / "notes").mkdir()
    first = export_version(repo, "m", model, spec, stats, {})
    second = export_version(repo, "m", model, spec, stats, {})
    assert (first.name, second.name) == ("8", "9")
    assert (repo / "m" / "7" / "keep.txt").read_text() == "an older version"
    assert not [p for p in (repo / "m").iterdir() if p.name.startswith(".")]


def test_non_ascii_digit_directories_are_not_versions(tmp_path: Path) -> None:
    # str.isdigit() is true for these, int() refuses them: every export used to fail.
    repo = tmp_path / "repo"
    for odd in ("\u00b2", "1\u00b2", "\u2460", "\u0663"):  # '²', '1²', '①', Arabic-Indic 3
        (repo / "m" / odd).mkdir(parents=True)
    (repo / "m" / "2").mkdir()
    assert existing_versions(repo / "m") == [2]
    table = tabular(8)
    spec = FeatureSpec.load(write_spec(tmp_path, table))
    stats = {"numeric": {n: {"mean": 0.0, "std": 1.0} for n in spec.numeric_names}}
    version = export_version(repo, "m", build_model(spec, stats, hidden=(4,)), spec, stats, {})
    assert version.name == "3"


def test_versions_follow_the_engines_rule_and_nothing_shows_before_publishing(
    tmp_path: Path, monkeypatch
) -> None:
    # "01" and numbers past 2**63 - 1 are no versions the engine serves: counting them,
    # the exporter published versions it would never load. And the temporary directory
    # sat in the model's own directory, which a poll saw as a model with no version.
    from conveyor.trainer import export

    repo = tmp_path / "repo"
    for name in ("01", "4", str(2**63)):
        (repo / "m" / name).mkdir(parents=True)
    assert existing_versions(repo / "m") == [4]
    table = tabular(8)
    spec = FeatureSpec.load(write_spec(tmp_path, table))
    stats = {"numeric": {n: {"mean": 0.0, "std": 1.0} for n in spec.numeric_names}}
    model = build_model(spec, stats, hidden=(4,))
    seen: list[list[str]] = []
    real_save = torch.jit.save

    def save(program, path):  # what a poll would see while the program is written
        seen.append(sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")))
        real_save(program, path)

    monkeypatch.setattr(export.torch.jit, "save", save)
    assert export_version(repo, "new", model, spec, stats, {}).name == "1"
    assert seen == [["m"]]  # no "new" model until its version 1 was published
    (repo / "m" / str(2**63 - 1)).mkdir()
    with pytest.raises(ExportError, match="no version number left"):
        export_version(repo, "m", model, spec, stats, {})
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    results: list[Path] = []

    def publish(i: int) -> None:
        tmp = model_dir / f".tmp-{i}"
        tmp.mkdir()
        (tmp / "model.pt").write_text(str(i))
        results.append(_publish(tmp, model_dir))

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(p.name) for p in results) == list(range(1, 9))
    assert sorted((p / "model.pt").read_text() for p in results) == [str(i) for i in range(8)]


def test_bad_model_name_is_an_error(tmp_path: Path) -> None:
    table = tabular(8)
    spec = FeatureSpec.load(write_spec(tmp_path, table))
    stats = {"numeric": {n: {"mean": 0.0, "std": 1.0} for n in spec.numeric_names}}
    for name in ("../x", "a/b", "with space"):
        with pytest.raises(ExportError, match="not a valid model name"):
            export_version(tmp_path, name, build_model(spec, stats), spec, stats, {})
    with pytest.raises(ExportError, match="model name is empty"):
        export_version(tmp_path, "", build_model(spec, stats), spec, stats, {})
    assert not (tmp_path / "with space").exists()  # refused before any directory is made


def test_category_keys() -> None:
    assert [category_key(v) for v in ("a", 42, True, False)] == ["a", "42", "true", "false"]
    # pandas' float64 for an integer column with a missing value: the same keys as ints.
    keys = [category_key(v) for v in (30.0, -2.0, 2.5, float("nan"))]
    assert keys == ["30", "-2", "2.5", "nan"]
