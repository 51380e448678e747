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
