"""config.json checks: the version policy (Triton's JSON form and the flag form)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.engine.errors import ModelLoadError
from conveyor.engine.model_config import VersionPolicy, parse_config

BASE: dict[str, Any] = {
    "name": "m",
    "platform": "torchscript",
    "max_batch_size": 4,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
}


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({"latest": {"num_versions": 2}}, [2, 3]),
        ({"latest": {}}, [3]),
        ({"all": {}}, [1, 2, 3]),
        ({"specific": {"versions": [1, 3]}}, [1, 3]),
        ("latest:2", [2, 3]),
        ("latest", [3]),
        ("all", [1, 2, 3]),
        ("specific:1,3", [1, 3]),
    ],
)
def test_version_policies_select(policy: Any, served: list[int]) -> None:
    config = parse_config({**BASE, "version_policy": policy}, "config.json")
    assert config.version_policy is not None
    assert config.version_policy.select([1, 2, 3]) == served


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"latest": {"num_verions": 3}}, "version_policy.latest: unknown keys ['num_verions']"),
        ({"latest": {"num_versions": 2.9}}, "version_policy.latest.num_versions: expected an"),
        (
            {"latest": {"num_versions": True}},
            "latest.num_versions: expected an integer >= 1, got True",
        ),
        ({"latest": {"num_versions": 0}}, "latest.num_versions: expected an integer >= 1, got 0"),
        ({"latest": 2}, "version_policy.latest: expected an object, got 2"),
        ({"specific": {"versions": [1, 3], "extra": 1}}, "specific: unknown keys ['extra']"),
        ({"all": {"num_versions": 1}}, "version_policy.all: unknown keys ['num_versions']"),
        ({"all": None}, "version_policy.all: expected an object, got None"),
        ({"specific": {"versions": []}}, "specific.versions: expected a non-empty list"),
        ({"specific": {}}, "specific.versions: expected a non-empty list"),
        ({"specific": {"versions": [-1, 0]}}, "specific.versions[0]: expected an integer >= 1"),
        ({"specific": {"versions": ["1"]}}, "specific.versions[0]: expected an integer >= 1"),
        # accepted, then ModelConfig failed INTERNAL ("Value out of range") on the int64 field
        (
            {"specific": {"versions": [1, 2**63]}},
            "specific.versions[1]: expected an integer in 1..9223372036854775807",
        ),
        ({"newest": {}}, "version_policy: unknown policy 'newest'"),
        ({"all": {}, "latest": {}}, "version_policy: expected one of latest, all, specific"),
        ("specific:", "got 'specific:'"),
        ("specific:1,,3", "got 'specific:1,,3'"),
        ("latest:0", "expected an integer >= 1, got 0"),
        ("latest:+2", "got 'latest:+2'"),
        ("all:2", "got 'all:2'"),
    ],
)
def test_bad_version_policies_are_load_errors_naming_the_key(policy: Any, message: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        parse_config({**BASE, "version_policy": policy}, "config.json")
    assert str(info.value).startswith("config.json: version_policy")
    assert message in str(info.value)


def test_the_flag_form_names_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^version_policy: expected latest\[:N\]"):
        VersionPolicy.parse("latest:two")


BATCHED: dict[str, Any] = {
    "name": "m",
    "platform": "torchscript",
    "max_batch_size": 8,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "columns": ["a", "b"]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dynamic_batching": {"max_queue_delay_microsecond": 1}},
         "unknown keys ['max_queue_delay_microsecond']"),
        ({"optimization": {"execution_accelerator": {}}}, "unknown keys ['execution_accelerator']"),
        ({"dynamic_batching": {"preferred_batch_size": [2, "4"]}},
         "dynamic_batching.preferred_batch_size[1]: expected an integer"),
        ({"dynamic_batching": {"preferred_batch_size": [2, 64]}},
         "dynamic_batching.preferred_batch_size[1]: 64 exceeds max_batch_size 8"),
        ({"labels": ["a", 1]}, "labels[1]: expected a string, got 1"),
        ({"features": [{"name": "a"}, {"kind": "numeric"}]}, "features[1]: expected an object"),
        # a falsy non-list was "no columns", or a TypeError that stopped the server
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "columns": 0}]},
         "inputs[0].columns: expected 2 distinct column names"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "columns": ["a", "a"]}]},
         "inputs[0].columns: expected 2 distinct column names"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "dims": [2]}]},
         "inputs[0]: expected {name, datatype, shape[, columns]}; unknown keys ['dims']"),
        # a queue per level, made up front: 10**8 grew the server until the kernel killed it
        ({"dynamic_batching": {"priority_levels": 10**12}},
         "dynamic_batching.priority_levels: expected an integer in 1..1024, got 1000000000000"),
        ({"instance_count": 100000}, "instance_count: expected an integer in 1..256, got 100000"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key_or_index(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        parse_config({**BATCHED, **change}, "m/1/config.json")
    assert message in str(info.value)


def test_a_config_file_python_cannot_decode_is_named(tmp_path) -> None:
    # An integer of 5001 digits (ValueError) or deep nesting (RecursionError) is no
    # JSONDecodeError: the reason came without the file's name.
    from conveyor.engine.model_config import load_config

    path = tmp_path / "config.json"
    for text in ('{"max_batch_size": ' + "9" * 5001 + "}", "[" * 100_000 + "]" * 100_000):
        path.write_text(text)
        with pytest.raises(ModelLoadError, match=f"^{path}: not valid JSON"):
            load_config(path)
