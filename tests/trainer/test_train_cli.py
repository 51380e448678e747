"""``conveyor train`` as a user runs it: flags, environment, config file, errors, summary."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from trainer_fixtures import run_cli

from conveyor.cli import build_parser, main
from conveyor.config import resolve
from conveyor.trainer.cli import register


def test_help_lists_the_train_command_and_its_knobs() -> None:
    done = run_cli("train", "--help")
    assert done.returncode == 0
    for flag in (
        "--spec", "--label", "--model-repository", "--model-name", "--nproc", "--epochs",
        "--batch-size", "--resume", "--out", "--lr", "--weight-decay", "--warmup-steps",
        "--clip-norm", "--accumulation", "--hidden", "--dropout", "--layer-norm", "--patience",
        "--checkpoint-every", "--seed", "--val-fraction", "--autocast",
    ):  # fmt: skip
        assert flag in done.stdout, flag


def _shown_default(help_text: str) -> str:
    """What a help text gives after "default" ("(default 256 128)" -> "256 128")."""
    found = re.search(r"default:? ([^);]+)", help_text)
    assert found, f"no default in {help_text!r}"
    return found.group(1).strip()


def test_help_states_every_default_and_states_it_right() -> None:
    # --batch-size, --hidden, --activation, --min-lr-ratio, --accumulation, --patience,
    # --checkpoint-every, --max-batch-size and --autocast stated none; read the real values
    # off the parser, so the help cannot drift from them either.
    parser = argparse.ArgumentParser(prog="conveyor")
    register(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = commands.choices["train"]
    checked = set()
    for action in train._actions:
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default == argparse.SUPPRESS
        ):
            continue
        flag = action.option_strings[0]
        shown = _shown_default(action.help or "").replace(":", "")
        if isinstance(default, list):
            assert shown.split() == [str(v) for v in default], flag
        elif isinstance(default, float):
            assert float(shown.split()[0]) == default, flag
        elif isinstance(default, int):
            assert int(shown.split()[0]) == default, flag
        else:
            assert shown.split()[0] == default, flag
        checked.add(flag)
    reported = {"--batch-size", "--hidden", "--activation", "--min-lr-ratio", "--accumulation",
                "--patience", "--checkpoint-every", "--max-batch-size", "--autocast"}  # fmt: skip
    assert reported | {"--seed", "--lr"} <= checked


def test_options_resolve_flags_over_env_over_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 7\nlr = 0.5\nhidden = [32, 16]\n")
    env = {"CONVEYOR_EPOCHS": "9", "CONVEYOR_LAYER_NORM": "true"}
    args = resolve(build_parser(), ["train", "src", "--label", "y", "--config", str(cfg)], env)
    assert (args.epochs, args.lr, args.hidden, args.layer_norm) == (9, 0.5, [32, 16], True)
    args = resolve(build_parser(), ["train", "src", "--label", "y", "--epochs", "2"], env)
    assert args.epochs == 2


def test_spec_and_label_together_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "x.parquet", "--spec", "s.json", "--label", "y", "--out", str(tmp_path)])
    assert code == 1
    assert "exactly one of --spec" in capsys.readouterr().err


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli("train", str(tmp_path / "nope"), "--label", "y", "--out", str(tmp_path / "r"))
    assert done.returncode == 1
    assert done.stderr.startswith("conveyor: error:") and "Traceback" not in done.stderr


def test_unknown_extension_is_named_with_what_train_can_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "clean.txt"
    text.write_text("x,y\n0.5,0\n")
    assert main(["train", str(text), "--label", "y", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert f"{text}: cannot tell the format from the extension '.txt'" in err
    assert "pass --format (parquet, csv, json or ipc)" in err and "format=" not in err


def test_format_reads_files_whose_extension_names_none(tmp_path: Path) -> None:
    # CSV exported as .txt: --format csv reads it as `conveyor ingest --format csv` would,
    # through profiling, training and validation (every Source the run opens).
    text = tmp_path / "rows.txt"
    lines = ["x,z,y"] + [f"{i / 100:.2f},{(i * 7) % 13},{i % 2}" for i in range(200)]
    text.write_text("\n".join(lines) + "\n")
    args = ["train", str(text), "--format", "csv", "--label", "y", "--out", str(tmp_path / "r")]
    assert main([*args, "--epochs", "1", "--batch-size", "64", "--hidden", "8", "--json"]) == 0
    spec = json.loads((tmp_path / "r" / "spec.json").read_text())
    assert "x" in json.dumps(spec) and "z" in json.dumps(spec)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["last"]["train"]["rows"] + summary["last"]["val"]["rows"] == 200


def test_format_must_be_a_known_one() -> None:
    from conveyor.trainer.config import TrainConfig
    from conveyor.trainer.errors import TrainerError

    with pytest.raises(TrainerError, match=r"--format must be one of .*'csv'.*got 'xlsx'"):
        TrainConfig(source="d", out="o", label="y", format="xlsx")
    # A seed out of range was a traceback from numpy, after the profiling pass.
    for seed in (-1, 2**63):
        with pytest.raises(TrainerError, match=r"--seed must be in \[0, 2\*\*63\)"):
            TrainConfig(source="d", out="o", label="y", seed=seed)


def test_train_end_to_end_on_demo_data(tmp_path: Path) -> None:
    from conveyor.demo.fraud_data import FraudDataConfig, write_dataset

    write_dataset(str(tmp_path / "fraud"), FraudDataConfig(rows=4000, days=2, fraud_rate=0.05))
    done = run_cli(
        "train", str(tmp_path / "fraud"), "--label", "is_fraud", "--key", "transaction_id",
        "--timestamp", "ts", "--model-repository", str(tmp_path / "repo"),
        "--model-name", "fraud", "--out", str(tmp_path / "run"), "--epochs", "2",
        "--batch-size", "128", "--hidden", "32", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["exported"] == str(tmp_path / "repo" / "fraud" / "1")
    config = json.loads((tmp_path / "repo" / "fraud" / "1" / "config.json").read_text())
    features = {f["name"]: f["kind"] for f in config["features"]}
    # key, timestamp and label are not features; the hive partition column is categorical
    assert "transaction_id" not in features and "ts" not in features
    assert features["amount"] == "numeric" and features["merchant_category"] == "categorical"
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["key"] == "transaction_id"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("val" in json.loads(x) for x in lines)


def test_existing_run_without_resume_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt-0000000005.pt").write_bytes(b"x")
    done = run_cli(
        "train", "nowhere", "--label", "y", "--out", str(tmp_path / "run"), "--nproc", "2"
    )
    assert done.returncode == 1
    assert "pass --resume" in done.stderr and "worker" not in done.stderr


def test_resume_that_cannot_continue_is_one_line_before_any_worker_starts(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A checkpoint of one rank; --nproc 2 --resume used to start both workers and print a
    # worker's traceback through torch's elastic launcher before the one line.
    argv = ["train", str(dataset), "--label", "y", "--key", "id", "--out", str(tmp_path / "r"),
            "--epochs", "1", "--batch-size", "64", "--hidden", "8"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--nproc", "2", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("conveyor: error: --resume: --nproc (world size) is 2 but checkpoint")


def test_a_workers_conveyor_error_is_one_line(tmp_path: Path, dataset: Path) -> None:
    # Raised in both workers (the metric is resolved against the task there): each ends
    # with its message recorded, not a traceback through torch's launcher (~33 lines).
    done = run_cli(
        "train", str(dataset), "--label", "y", "--out", str(tmp_path / "run"), "--nproc", "2",
        "--metric", "rmse", "--epochs", "1", "--hidden", "8", "--log-level", "warning",
    )  # fmt: skip
    assert done.returncode == 1
    assert re.fullmatch(
        r"conveyor: error: worker rank [01]: --metric 'rmse' does not apply to binary "
        r"\(use \['auc', 'logloss'\]\)\n",
        done.stderr,
    ), done.stderr


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden", "with space", "-dash", "a\n"])
def test_bad_model_name_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # The source does not exist: had the command started reading it, that error would show.
    argv = ["train", str(tmp_path / "nope.parquet"), "--label", "y", "--out", str(tmp_path / "r"),
            "--model-repository", str(tmp_path / "repo"), f"--model-name={name}"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"conveyor: error: --model-name {name!r} is not a valid model name")
    assert not (tmp_path / "r").exists() and not (tmp_path / "repo").exists()


def test_empty_model_name_is_an_error_not_a_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to export quietly under "model"; the README documents no default name.
    argv = ["train", str(tmp_path / "nope.parquet"), "--label", "y", "--out", str(tmp_path / "r"),
            "--model-repository", str(tmp_path / "repo"), "--model-name", ""]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "conveyor: error: --model-name is empty: give the name the model is served under"
    ]
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_nproc_below_one_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nproc: str
) -> None:
    # It ran one process silently. The source does not exist: the flag is checked first.
    argv = ["train", str(tmp_path / "nope.parquet"), "--label", "y", "--out", str(tmp_path / "r"),
            f"--nproc={nproc}"]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"conveyor: error: --nproc must be >= 1, got {nproc}"
    ]
