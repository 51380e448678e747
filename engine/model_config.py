"""A model version's ``config.json``: tensors, batching and instances, parsed and checked.

The file is written by the trainer; see ``engine/README.md`` for the whole
model-version directory contract. Unknown keys are errors, so a typo in a
config cannot silently change how a model is served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from conveyor.engine.errors import ModelLoadError
from conveyor.engine.tensors import DATATYPES
from conveyor.versions import MAX_VERSION, version_number

PLATFORMS = ("torchscript", "torch_export")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: OIP ``datatype`` and ``shape`` without the batch dim (-1 = variable).

    ``columns`` optionally names the feature columns of a ``[batch, C]`` input,
    in order (the client SDK uses them to build the tensor from a table).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher settings.

    Attributes:
        max_queue_delay_microseconds: the longest the oldest queued request
            may wait for others to join its batch (default 250). The batcher
            waits only while requests arrive fast enough to fill the batch and
            holding requests has recently gathered company, so a lone request
            (or a closed-loop client at concurrency 1) is dispatched at once;
            0 never waits. Larger values (e.g. 2000) buy throughput when the
            server is saturated, at up to that much latency for open-loop
            traffic below saturation (benchmarks/README.md has both figures).
        preferred_batch_size: batch sizes (rows) dispatched at once when they
            can be formed (default none: dispatch at ``max_batch_size`` or on delay):
            as Triton's, a size is formed when whole requests, taken in priority
            order, add up to it exactly; the largest such size is taken.
        max_queue_size: requests queued per priority level before new ones of
            that level get RESOURCE_EXHAUSTED (default 1024; 0 = the default), as
            Triton's ``default_queue_policy.max_queue_size``: a flood of
            low-priority requests cannot lock out high-priority ones.
        priority_levels: number of priority levels, 1 = highest (default 2).
        default_priority_level: level of requests without a priority (default
            0 = the lowest level).
    """

    max_queue_delay_microseconds: int = 250
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = 1024
    priority_levels: int = 2
    default_priority_level: int = 0


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served: ``latest`` N (default 1), ``all``, or ``specific``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among ``available``, ascending."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if self.num_versions > 0 else []

    def spelling(self) -> str:
        """The flag form: ``latest:2``, ``all``, ``specific:1,3``."""
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return f"latest:{self.num_versions}"

    @classmethod
    def parse(cls, value: Any, where: str = "version_policy") -> VersionPolicy:
        """From Triton's JSON form (``{"latest": {"num_versions": 2}}``, ``{"all": {}}``,
        ``{"specific": {"versions": [1, 3]}}``) or the flag form (``latest:2``, ``all``,
        ``specific:1,3``).

        Strict, like the rest of config.json: unknown keys, numbers that are not
        integers >= 1 (``2.9``, ``true``) and an empty ``specific`` list are
        ValueErrors naming the key and value, since each would otherwise silently
        change which versions are served (or serve none).
        """
        if isinstance(value, str):
            return cls._parse_flag(value, where)
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(
                f"{where}: expected one of latest, all, specific (one key), got {value!r}"
            )
        ((kind, arg),) = value.items()
        at = f"{where}.{kind}"
        allowed = {"latest": {"num_versions"}, "all": set(), "specific": {"versions"}}
        if kind not in allowed:
            raise ValueError(f"{where}: unknown policy {kind!r} (expected latest, all, specific)")
        if not isinstance(arg, dict):
            raise ValueError(f"{at}: expected an object, got {arg!r}")
        unknown = set(arg) - allowed[kind]
        if unknown:
            expected = ", ".join(sorted(allowed[kind])) or "no keys"
            raise ValueError(f"{at}: unknown keys {sorted(unknown)} (expected {expected})")
        if kind == "all":
            return cls("all")
        if kind == "latest":
            n = _positive(arg.get("num_versions", 1), f"{at}.num_versions")
            return cls("latest", num_versions=n)
        versions = arg.get("versions")
        if not isinstance(versions, list) or not versions:
            raise ValueError(
                f"{at}.versions: expected a non-empty list of versions, got {versions!r}"
            )
        return cls(
            "specific",
            versions=tuple(
                _positive(v, f"{at}.versions[{i}]", MAX_VERSION) for i, v in enumerate(versions)
            ),
        )

    @classmethod
    def _parse_flag(cls, value: str, where: str) -> VersionPolicy:
        kind, colon, arg = value.partition(":")
        if kind == "all" and not colon:
            return cls("all")
        if kind == "latest":
            n = _positive(_digits(arg, where, value), where) if colon else 1
            return cls("latest", num_versions=n)
        if kind == "specific":
            items = arg.split(",")
            return cls(
                "specific",
                versions=tuple(_positive(_digits(v, where, value), where) for v in items),
            )
        raise ValueError(f"{where}: expected latest[:N], all or specific:V1,V2, got {value!r}")


def _positive(value: Any, where: str, maximum: int | None = None) -> int:
    """A version count or number: an integer >= 1 (JSON booleans and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: expected an integer >= 1, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{where}: expected an integer in 1..{maximum}, got {value}")
    return value


def _digits(text: str, where: str, whole: str) -> int:
    number = version_number(text)
    if number is None:
        raise ValueError(f"{where}: expected latest[:N], all or specific:V1,V2, got {whole!r}")
    return number


@dataclass(frozen=True)
class ModelConfig:
    """A parsed ``config.json``; every tensor has a leading batch dim <= ``max_batch_size``."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: DynamicBatching = field(default_factory=DynamicBatching)
    instance_count: int = 1
    labels: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    version_policy: VersionPolicy | None = None
    # The trainer's description of each raw feature: name, kind, input, index, datatype...
    features: tuple[dict[str, Any], ...] = ()
    # optimization.execution_accelerators.cpu_execution_accelerator names (engine/accelerators.py).
    cpu_accelerators: tuple[str, ...] = ()

    def execution_timeout(self, default: float | None) -> float | None:
        """Seconds one batch of this model may run before it is abandoned: the
        ``execution_timeout_seconds`` parameter (0 = never) when config.json has it,
        else ``default`` (the server's ``--execution-timeout``; None = never).

        A model known to take long (large batches on a slow device) can allow more
        than the server's default; one that must answer fast can allow less.
        """
        raw = self.parameters.get("execution_timeout_seconds")
        if raw is None:
            return default
        try:
            seconds = float(raw)
        except (TypeError, ValueError):
            seconds = float("nan")
        if not seconds >= 0 or seconds == float("inf"):
            raise ModelLoadError(
                f"model {self.name}: config.json parameters.execution_timeout_seconds: "
                f"expected a number of seconds >= 0 (0 = never), got {raw!r}"
            )
        return seconds or None

    def with_batching(self, **overrides: Any) -> ModelConfig:
        """A copy with some dynamic-batching fields replaced (server flags win over files)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, dynamic_batching=replace(self.dynamic_batching, **clean))

    def with_max_batch_size(self, max_batch_size: int) -> ModelConfig:
        """A copy batching at most ``max_batch_size`` rows (``--max-batch-size``): preferred
        sizes above it are dropped, as the batcher drops them, so that the ModelConfig RPC
        shows what is served (Triton refuses a preferred size above max_batch_size)."""
        batching = self.dynamic_batching
        kept = tuple(p for p in batching.preferred_batch_size if p <= max_batch_size)
        return replace(
            self,
            max_batch_size=max_batch_size,
            dynamic_batching=replace(batching, preferred_batch_size=kept),
        )


_TOP = {
    "name",
    "platform",
    "max_batch_size",
    "inputs",
    "outputs",
    "dynamic_batching",
    "instance_count",
    "labels",
    "parameters",
    "version_policy",
    "features",
    "optimization",
}
_BATCHING = set(DynamicBatching.__dataclass_fields__)


# Upper bounds where a value is allocated up front: the batcher keeps a queue per
# priority level and scans them on every decision, and starts a thread per instance.
# (priority_levels 10**8 grew the server by 500 MB/s until the kernel killed it.)
MAX_PRIORITY_LEVELS = 1024
MAX_INSTANCE_COUNT = 256


def _int(value: Any, where: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelLoadError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ModelLoadError(f"{where}: expected an integer in {minimum}..{maximum}, got {value}")
    return value


def _tensors(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items:
        raise ModelLoadError(f"{where}: expected a non-empty list of tensors")
    specs = []
    seen = set()
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        keys = {"name", "datatype", "shape", "columns"}
        if not isinstance(item, dict) or set(item) - keys:
            raise ModelLoadError(
                f"{at}: expected {{name, datatype, shape[, columns]}}{_unknown(item, keys)}, "
                f"got {item!r}"
            )
        name, dtype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not name:
            raise ModelLoadError(f"{at}.name: expected a non-empty string")
        if name in seen:
            raise ModelLoadError(f"{at}.name: duplicate tensor name {name!r}")
        seen.add(name)
        if dtype not in DATATYPES:
            raise ModelLoadError(
                f"{at}.datatype: {dtype!r} is not one of {', '.join(sorted(DATATYPES))}"
            )
        if not isinstance(shape, list) or any(
            isinstance(d, bool) or not isinstance(d, int) or d < -1 or d == 0 for d in shape
        ):
            raise ModelLoadError(f"{at}.shape: expected a list of dims >= 1 or -1, got {shape!r}")
        columns = item.get("columns", [])
        # Any non-list (0, false, {}) is an error too, not "no columns".
        if not isinstance(columns, list) or (
            columns
            and (
                not all(isinstance(c, str) for c in columns)
                or len(set(columns)) != len(columns)
                or len(shape) != 1
                or shape[0] != len(columns)
            )
        ):
            raise ModelLoadError(
                f"{at}.columns: expected {shape[0] if len(shape) == 1 else 'C'} distinct "
                f"column names for a tensor of shape [batch, C], got {columns!r}"
            )
        specs.append(TensorSpec(name, dtype, tuple(shape), tuple(columns)))
    return tuple(specs)


def _accelerators(data: Any, where: str) -> tuple[str, ...]:
    """Triton's ``optimization.execution_accelerators.cpu_execution_accelerator`` names."""
    from conveyor.engine.accelerators import ACCELERATORS

    at = f"{where}: optimization"
    keys = {"execution_accelerators"}
    if not isinstance(data, dict) or set(data) - keys:
        raise ModelLoadError(
            f"{at}: expected an object with 'execution_accelerators'{_unknown(data, keys)}"
        )
    accel = data.get("execution_accelerators", {})
    at += ".execution_accelerators"
    if not isinstance(accel, dict) or set(accel) - {"cpu_execution_accelerator"}:
        raise ModelLoadError(
            f"{at}: expected an object with 'cpu_execution_accelerator' (no GPU "
            f"accelerators){_unknown(accel, {'cpu_execution_accelerator'})}"
        )
    items = accel.get("cpu_execution_accelerator", [])
    at += ".cpu_execution_accelerator"
    if not isinstance(items, list):
        raise ModelLoadError(f"{at}: expected a list of {{name}} objects")
    names = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        # Triton's form has "parameters"; conveyor's accelerators take none, and a
        # setting that would be ignored is refused like any unknown key.
        if (
            not isinstance(item, dict)
            or set(item) - {"name", "parameters"}
            or item.get("parameters", {}) != {}
            or name not in ACCELERATORS
        ):
            raise ModelLoadError(
                f"{at}[{i}]: expected {{name}} with name one of {ACCELERATORS} (no "
                f"parameters), got {item!r}"
            )
        names.append(name)
    return tuple(names)


def _unknown(data: Any, allowed: set[str]) -> str:
    """``; unknown keys [...]`` for an object with keys outside ``allowed``, else ''."""
    if not isinstance(data, dict):
        return f"; got {type(data).__name__}"
    extra = sorted(set(data) - allowed)
    return f"; unknown keys {extra}" if extra else ""


def parse_config(data: Any, where: str) -> ModelConfig:
    """Check and convert a decoded ``config.json``; errors name ``where`` and the key."""
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where}: expected a JSON object")
    unknown = set(data) - _TOP
    if unknown:
        raise ModelLoadError(f"{where}: unknown keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"{where}: 'name' must be a non-empty string")
    platform = data.get("platform")
    if platform not in PLATFORMS:
        raise ModelLoadError(f"{where}: 'platform' must be one of {PLATFORMS}, got {platform!r}")
    # conveyor always batches: every tensor has a leading batch dim (no Triton-style 0).
    max_batch = _int(data.get("max_batch_size"), f"{where}: max_batch_size", 1)
    batching_raw = data.get("dynamic_batching", {})
    if not isinstance(batching_raw, dict) or set(batching_raw) - _BATCHING:
        raise ModelLoadError(
            f"{where}: dynamic_batching: expected an object with keys from "
            f"{sorted(_BATCHING)}{_unknown(batching_raw, _BATCHING)}"
        )
    b = DynamicBatching()
    preferred = batching_raw.get("preferred_batch_size", [])
    if not isinstance(preferred, list):
        raise ModelLoadError(f"{where}: dynamic_batching.preferred_batch_size: expected a list")
    batching = DynamicBatching(
        max_queue_delay_microseconds=_int(
            batching_raw.get("max_queue_delay_microseconds", b.max_queue_delay_microseconds),
            f"{where}: dynamic_batching.max_queue_delay_microseconds",
        ),
        preferred_batch_size=tuple(
            sorted(
                _int(p, f"{where}: dynamic_batching.preferred_batch_size[{i}]", 1)
                for i, p in enumerate(preferred)
            )
        ),
        max_queue_size=_int(
            batching_raw.get("max_queue_size", b.max_queue_size),
            f"{where}: dynamic_batching.max_queue_size",
        )
        or b.max_queue_size,
        priority_levels=_int(
            batching_raw.get("priority_levels", b.priority_levels),
            f"{where}: dynamic_batching.priority_levels",
            1,
            MAX_PRIORITY_LEVELS,
        ),
        default_priority_level=_int(
            batching_raw.get("default_priority_level", b.default_priority_level),
            f"{where}: dynamic_batching.default_priority_level",
        ),
    )
    if batching.default_priority_level > batching.priority_levels:
        raise ModelLoadError(
            f"{where}: dynamic_batching.default_priority_level exceeds priority_levels"
        )
    for i, p in enumerate(preferred):
        if p > max_batch:
            raise ModelLoadError(
                f"{where}: dynamic_batching.preferred_batch_size[{i}]: {p} exceeds "
                f"max_batch_size {max_batch}"
            )
    labels = data.get("labels", [])
    if not isinstance(labels, list):
        raise ModelLoadError(f"{where}: 'labels' must be a list of strings")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise ModelLoadError(f"{where}: labels[{i}]: expected a string, got {label!r}")
    parameters = data.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ModelLoadError(f"{where}: 'parameters' must be an object")
    features = data.get("features", [])
    if not isinstance(features, list):
        raise ModelLoadError(f"{where}: 'features' must be a list of objects with a 'name'")
    for i, f in enumerate(features):
        if not (isinstance(f, dict) and isinstance(f.get("name"), str)):
            raise ModelLoadError(f"{where}: features[{i}]: expected an object with a 'name'")
    policy = None
    if "version_policy" in data:
        try:
            policy = VersionPolicy.parse(data["version_policy"], f"{where}: version_policy")
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
    return ModelConfig(
        name=name,
        platform=platform,
        max_batch_size=max_batch,
        inputs=_tensors(data.get("inputs"), f"{where}: inputs"),
        outputs=_tensors(data.get("outputs"), f"{where}: outputs"),
        dynamic_batching=batching,
        instance_count=_int(
            data.get("instance_count", 1), f"{where}: instance_count", 1, MAX_INSTANCE_COUNT
        ),
        labels=tuple(labels),
        parameters=parameters,
        version_policy=policy,
        features=tuple(features),
        cpu_accelerators=_accelerators(data.get("optimization", {}), where),
    )


def load_config(path: Path) -> ModelConfig:
    """Read and check ``path`` (a version's ``config.json``)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing (every model version needs a config.json)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an over-long integer, nesting
        raise ModelLoadError(f"{path}: not valid JSON: {exc}") from None
    return parse_config(data, str(path))
