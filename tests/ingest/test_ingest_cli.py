"""`conveyor ingest profile` and `conveyor ingest validate`, end to end."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conveyor.cli import main
from conveyor.ingest.spec import FeatureSpec

N = 200


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N)
    x[[10, 20]] = np.nan
    table = pa.table(
        {
            "x": x,
            "n": rng.integers(0, 100, N),
            "c": rng.choice(["u", "v", "w"], N),
            "y": rng.integers(0, 2, N),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=64)
    return path


def test_profile_writes_spec_stats_report_and_quarantine(data, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "ingest", "profile", str(data), "--label", "y",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rows in           200" in result.stdout and "nan" in result.stdout
    spec = FeatureSpec.load(out / "spec.json")
    assert spec.label.task == "binary" and spec.numeric_names == ["x", "n"]
    assert spec.categorical_names == ["c"] and spec.categorical[0].vocab
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == N - 2 and len(stats["numeric"]["x"]["edges"]) == 21
    report = json.loads((out / "report.json").read_text())
    assert report["accounting"] == {
        "rows_in": N, "rows_out": N - 2, "rows_quarantined": 2,
        "quarantined_by_rule": {"nan": 2}, "imputed_by_rule": {},
    }  # fmt: skip
    q = pq.read_table(out / "quarantine.parquet")
    assert q.column("_row").to_pylist() == [10, 20] and q.column("_rule").to_pylist() == ["nan"] * 2


def test_validate_passes_then_rejects_with_one_line(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ingest", "profile", str(data), "--label", "y", "--out", str(out)]) == 0
    spec = str(out / "spec.json")
    q = tmp_path / "vq.parquet"
    assert main(["ingest", "validate", str(data), "--spec", spec, "--quarantine", str(q)]) == 0
    assert pq.read_table(q).num_rows == 2
    capsys.readouterr()
    code = main(["ingest", "validate", str(data), "--spec", spec, "--policy", "nan=reject"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.count("\n") == 0
    assert err == f"conveyor: error: {data}: row 10, column 'x': rule 'nan' rejected, value nan"


def test_validate_applies_profiled_ranges(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ingest", "profile", str(data), "--label", "y", "--out", str(out)]) == 0
    t = pq.read_table(data)
    x = t.column("x").to_numpy().copy()
    x[5] = 1e6  # beyond the profiled max
    pq.write_table(t.set_column(0, "x", pa.array(x)), tmp_path / "new.parquet")
    code = main(["ingest", "validate", str(tmp_path / "new.parquet"), "--spec",
                 str(out / "spec.json"), "--policy", "range=reject"])  # fmt: skip
    assert code != 0 and "row 5, column 'x': rule 'range' rejected, value 1000000.0" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["validate", "{missing}", "--spec", "{spec}"], 1, "{missing}: not found"),
        (["validate", "{data}", "--spec", "{nospec}"], 1, "{nospec}: spec file not found"),
        (["validate", "{data}", "--spec", "{spec}", "--policy", "nan"], 2, "expected RULE=POLICY"),
        (["validate", "{data}", "--spec", "{spec}", "--policy", "bogus=reject"], 2,
         "argument --policy: bogus=reject: unknown rule 'bogus' (rules: parse, type,"),
        (["validate", "{data}", "--spec", "{spec}", "--policy", "nan=maybe"], 2,
         "argument --policy: nan=maybe: rule 'nan' takes reject, quarantine, impute, not 'maybe'"),
        (["validate", "{data}", "--spec", "{spec}", "--policy", "extra_column=quarantine"], 2,
         "extra_column=quarantine: rule 'extra_column' takes reject, ignore, not 'quarantine'"),
        (["validate", "{data}", "--spec", "{spec}", "--policy", "null=impute"], 1,
         "--policy null=impute: numeric 'x' has no \"impute\" value in {spec} to write"),
        (["profile", "{data}", "--label", "y", "--out", "{out}", "--policy", "range=impute"], 1,
         "--policy range=impute: numeric 'x' has no \"impute\" value to write (an inferred spec"),
        (["validate", "{data}", "--spec", "{spec}", "--format", "xml"], 2, "invalid choice"),
        (["profile", "{data}", "--out", "{out}"], 1,
         "give --label COL (to infer a spec) or --spec FILE (to apply one)"),
        (["profile", "{data}", "--spec", "{spec}", "--label", "x", "--out", "{out}"], 1,
         "{spec}: label is 'y', not 'x'"),
        (["profile", "{data}", "--label", "nope", "--out", "{out}"], 1,
         "{data}: label column 'nope' is not in the data"),
        (["profile", "{data}", "--label", "y", "--out", "{data}"], 1, "is not a directory"),
        (["profile", "{data}", "--label", "y", "--out", "{out}", "--bins", "0"], 2,
         "expected a positive integer"),
    ],
)  # fmt: skip
def test_bad_flags_and_paths_give_clear_errors(data, tmp_path, capsys, args, code, message):
    out = tmp_path / "out"
    main(["ingest", "profile", str(data), "--label", "y", "--out", str(out)])
    capsys.readouterr()
    names = {
        "data": str(data),
        "spec": str(out / "spec.json"),
        "missing": str(tmp_path / "missing.parquet"),
        "nospec": str(tmp_path / "nospec.json"),
        "out": str(tmp_path / "out2"),
    }
    argv = ["ingest", *(a.format(**names) for a in args)]
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse usage errors
        got = exc.code
    err = capsys.readouterr().err
    assert got == code
    assert message.format(**names) in err
    assert "Traceback" not in err


def test_policy_help_lists_ignore_and_bad_policies_are_not_blamed_on_the_spec(
    data, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(["ingest", "profile", str(data), "--label", "y", "--out", str(out)]) == 0
    capsys.readouterr()
    spec = str(out / "spec.json")
    with pytest.raises(SystemExit):
        main(["ingest", "validate", str(data), "--spec", spec, "--policy", "nan=foo"])
    err = capsys.readouterr().err
    assert "argument --policy: nan=foo:" in err and "spec:" not in err  # it said "spec: rule ..."
    # The help said "(reject|quarantine|impute)", yet extra_column=ignore is allowed.
    with pytest.raises(SystemExit):
        main(["ingest", "validate", "--help"])
    assert "ignore" in " ".join(capsys.readouterr().out.split())
    code = main(
        ["ingest", "validate", str(data), "--spec", spec, "--policy", "extra_column=ignore"]
    )
    assert code == 0


def test_an_impute_policy_without_a_value_in_the_spec_file_names_the_file(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ingest", "profile", str(data), "--label", "y", "--out", str(out)]) == 0
    spec = json.loads((out / "spec.json").read_text())
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**spec, "policies": {"nan": "impute"}}))
    capsys.readouterr()
    assert main(["ingest", "validate", str(data), "--spec", str(edited)]) == 1
    assert capsys.readouterr().err == (
        f"conveyor: error: {edited}: rule 'nan' has the impute policy, but numeric 'x' has "
        'no "impute" value to write (set one there)\n'
    )
    # Given a value, the policy imputes: the two NaN rows are written, none quarantined.
    spec["numeric"] = [{**f, "impute": 0.0} for f in spec["numeric"]]
    edited.write_text(json.dumps({**spec, "policies": {"nan": "impute"}}))
    assert main(["ingest", "validate", str(data), "--spec", str(edited)]) == 0
    assert "rows quarantined  0" in capsys.readouterr().out


def test_unknown_extension_tells_the_cli_user_to_pass_format(data, tmp_path, capsys):
    text = tmp_path / "clean.txt"
    text.write_text("x,n,c,y\n0.5,1,u,0\n")
    assert main(["ingest", "profile", str(data), "--label", "y", "--out", str(tmp_path / "o")]) == 0
    spec = str(tmp_path / "o" / "spec.json")
    capsys.readouterr()
    assert main(["ingest", "validate", str(text), "--spec", spec]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"conveyor: error: {text}: cannot tell the format from the extension")
    assert err.rstrip().endswith("pass --format (parquet, csv, json or ipc)"), err
    assert "format=" not in err and err.count("\n") == 1
    assert main(["ingest", "validate", str(text), "--spec", spec, "--format", "csv"]) == 0


def test_profile_with_a_spec_needs_no_label(data, tmp_path, capsys):
    # README: --spec replaces inference, so the label comes from the spec ("the following
    # arguments are required: --label" before).
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["ingest", "profile", str(data), "--label", "y", "--out", str(first)]) == 0
    spec = str(first / "spec.json")
    assert main(["ingest", "profile", str(data), "--spec", spec, "--out", str(second)]) == 0
    assert FeatureSpec.load(second / "spec.json") == FeatureSpec.load(spec)
    assert json.loads((second / "report.json").read_text())["accounting"]["rows_out"] == N - 2
    # The spec's own label given as well is fine.
    assert main(["ingest", "profile", str(data), "--spec", spec, "--label", "y", "--out",
                 str(tmp_path / "third")]) == 0  # fmt: skip


def test_profile_csv_with_a_bad_number_early_keeps_the_column_numeric(tmp_path):
    rows = [f"{i * 0.5},{['u', 'v'][i % 2]},{i % 2}" for i in range(300)]
    rows[0] = "n/a?,u,0"  # inside the first block pyarrow infers types from
    (tmp_path / "d.csv").write_text("x,c,y\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert (
        main(["ingest", "profile", str(tmp_path / "d.csv"), "--label", "y", "--out", str(out)]) == 0
    )
    spec = FeatureSpec.load(out / "spec.json")
    assert spec.numeric_names == ["x"] and spec.categorical_names == ["c"]
    report = json.loads((out / "report.json").read_text())["accounting"]
    assert report["quarantined_by_rule"] == {"type": 1} and report["rows_out"] == 299
    stats = json.loads((out / "stats.json").read_text())
    assert stats["numeric"]["x"]["count"] == 299 and stats["numeric"]["x"]["min"] == 0.5
    q = pq.read_table(out / "quarantine.parquet").to_pylist()[0]
    assert (q["_row"], q["_column"], q["_value"], q["x"]) == (0, "x", "n/a?", "n/a?")


def test_a_header_only_csv_names_the_file(tmp_path, capsys):
    path = tmp_path / "header.csv"
    path.write_text("x,y\n")
    assert main(["ingest", "profile", str(path), "--label", "y", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{path}: label 'y' has type null" in err and "no rows" in err, err
