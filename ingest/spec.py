"""The feature spec: which columns feed the model and how, in a small human-editable JSON file.

``spec.json`` (``version`` 1)::

    {
      "version": 1,
      "label": {"name": "y", "task": "binary" | "multiclass" | "regression",
                "classes": [0, 1] | ["cat", "dog"] | null},   # class id = index in classes
      "numeric": [{"name": "x1", "min": null, "max": null, "impute": null}, ...],
      "categorical": [{"name": "c", "vocab": ["a", "b"], "impute": null}, ...],
      "weight": null | "w", "timestamp": null | "ts", "key": null | "id",
      "ignore": ["notes"],                  # columns present in the data but not used
      "policies": {"type": "quarantine", ...}  # rule -> policy, overrides the defaults
    }

Categorical ids: ``vocab[i]`` has id ``i + 1``; id ``0`` (:data:`OOV_ID`) is the
out-of-vocabulary id, for unseen categories. Numeric ``min``/``max`` are declared ranges
(inclusive; null = none); ``impute`` is the value the ``impute`` policy writes (for a
categorical, null means "use the OOV id"). Unknown keys are errors, so typos are caught.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from conveyor.ingest.errors import SpecError

SPEC_VERSION = 1
TASKS = ("binary", "multiclass", "regression")
OOV_ID = 0
POLICIES = ("reject", "quarantine", "impute")

# Row-level rules default to quarantine, dataset-level ones to reject (issue 3). Unseen
# categories default to impute, i.e. the OOV id: mapping them there is what the OOV id is for.
DEFAULT_POLICIES: dict[str, str] = {
    "parse": "quarantine",  # a text row that cannot be split into columns (ragged CSV)
    "type": "quarantine",  # a value that does not parse as the column's type
    "null": "quarantine",  # a null in a declared column
    "nan": "quarantine",  # NaN or +-inf in a float column
    "range": "quarantine",  # outside declared (or profiled) min/max
    "unseen_category": "impute",  # a categorical value not in the vocabulary -> OOV id
    "unseen_class": "quarantine",  # a label value not in label.classes
    "duplicate_key": "quarantine",  # a key seen before in the same scan
    "missing_column": "reject",  # a declared column absent from the data
    "extra_column": "reject",  # a data column the spec neither uses nor ignores
}
RULES = tuple(DEFAULT_POLICIES)
# Rules whose impute policy writes a numeric feature's declared ``impute`` value.
IMPUTED_VALUE_RULES = ("type", "null", "nan", "range")
# Policies that make sense per rule: a ragged row cannot be imputed, a label cannot be made up,
# an extra column can only be rejected or ignored, a dataset-level rule cannot quarantine rows
# one by one.
ALLOWED_POLICIES: dict[str, tuple[str, ...]] = {
    "parse": ("reject", "quarantine"),
    "unseen_class": ("reject", "quarantine"),
    "duplicate_key": ("reject", "quarantine"),
    "missing_column": ("reject", "impute"),
    "extra_column": ("reject", "ignore"),
}


@dataclass
class Label:
    """The target column. ``classes`` lists class values for binary/multiclass (id = index)."""

    name: str
    task: str
    classes: list[Any] | None = None


@dataclass
class NumericFeature:
    """A numeric input: ``min``/``max`` inclusive bounds (None = unbounded); ``impute`` is the
    value the impute policy writes."""

    name: str
    min: float | None = None
    max: float | None = None
    impute: float | None = None


@dataclass
class CategoricalFeature:
    """A categorical input; ``vocab[i]`` maps to id ``i + 1``, anything else to :data:`OOV_ID`."""

    name: str
    vocab: list[Any] = field(default_factory=list)
    impute: Any = None


@dataclass
class FeatureSpec:
    """What to read and how: see the module docstring for the JSON schema."""

    label: Label
    numeric: list[NumericFeature] = field(default_factory=list)
    categorical: list[CategoricalFeature] = field(default_factory=list)
    weight: str | None = None
    timestamp: str | None = None
    key: str | None = None
    ignore: list[str] = field(default_factory=list)
    policies: dict[str, str] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        self.check()

    # -- derived -----------------------------------------------------------------------------
    @property
    def numeric_names(self) -> list[str]:
        return [f.name for f in self.numeric]

    @property
    def categorical_names(self) -> list[str]:
        return [f.name for f in self.categorical]

    def columns(self) -> list[str]:
        """Every column the spec reads, in a fixed order (no duplicates)."""
        cols = [self.label.name, *self.numeric_names, *self.categorical_names]
        cols += [c for c in (self.weight, self.timestamp, self.key) if c is not None]
        return list(dict.fromkeys(cols))

    def declared_types(self) -> dict[str, str]:
        """Arrow type names the spec implies, for reading text formats (CSV, JSON) without
        inference: numeric features, a regression label and the weight are ``float64``; a
        categorical's (or a class label's) type follows its vocabulary: ``bool``, ``int64``,
        ``float64`` or ``string``. The timestamp is ``"timestamp"``: microseconds, UTC when
        any file's values carry a zone (the source decides, see ``source.py``). Columns the
        spec says nothing about (an empty vocabulary, key, ignored columns) are left to
        inference."""
        types = dict.fromkeys(self.numeric_names, "float64")
        if self.timestamp is not None:
            types[self.timestamp] = "timestamp"
        if self.weight is not None:
            types[self.weight] = "float64"
        for f in self.categorical:
            if f.vocab:
                types[f.name] = _value_type(f.vocab)
        if self.label.task == "regression":
            types[self.label.name] = "float64"
        else:
            types[self.label.name] = _value_type(self.label.classes or [])
        return types

    def policy(self, rule: str) -> str:
        """The policy in force for ``rule``: the spec's override, else the default."""
        return self.policies.get(rule, DEFAULT_POLICIES[rule])

    def missing_impute_values(self) -> list[tuple[str, str]]:
        """``(feature, rule)`` for each numeric feature with no ``impute`` value while one of
        the rules about its values (type, null, nan, range) has the ``impute`` policy: the
        policy would have nothing to write."""
        rules = [r for r in IMPUTED_VALUE_RULES if self.policy(r) == "impute"]
        return [(f.name, r) for f in self.numeric if f.impute is None for r in rules[:1]]

    def with_policies(self, overrides: dict[str, str]) -> FeatureSpec:
        """A copy with ``overrides`` (rule -> policy) on top of this spec's policies."""
        data = self.to_dict()
        data["policies"] = {**self.policies, **overrides}
        return FeatureSpec.from_dict(data)

    # -- checks ------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`SpecError` if the spec is inconsistent."""
        if self.version != SPEC_VERSION:
            raise SpecError(f"spec version {self.version} is not supported (expected 1)")
        if self.label.task not in TASKS:
            raise SpecError(f"label task {self.label.task!r} is not one of {TASKS}")
        if self.label.task != "regression" and not self.label.classes:
            raise SpecError(f"label task {self.label.task!r} needs label.classes")
        if self.label.task == "binary" and len(self.label.classes or []) != 2:
            raise SpecError("a binary label needs exactly 2 classes")
        seen: set[str] = set()
        used = [self.label.name, *self.numeric_names, *self.categorical_names]
        used += [c for c in (self.weight, self.timestamp, self.key) if c is not None]
        for name in [*used, *self.ignore]:
            if name in seen and name not in (self.timestamp, self.key):
                raise SpecError(f"column {name!r} is declared twice")
            seen.add(name)
        for rule, policy in self.policies.items():
            if rule not in DEFAULT_POLICIES:
                raise SpecError(f"unknown rule {rule!r} (rules: {', '.join(RULES)})")
            allowed = ALLOWED_POLICIES.get(rule, POLICIES)
            if policy not in allowed:
                raise SpecError(f"rule {rule!r}: policy {policy!r} not one of {allowed}")
        for f in self.numeric:
            for key in ("min", "max", "impute"):
                value = getattr(f, key)
                # Checked here, so that a typo is named with the spec file, not met mid-scan.
                if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
                    raise SpecError(
                        f"numeric {f.name!r}: {key} {value!r} is not a number "
                        f"({type(value).__name__})"
                    )
            if f.min is not None and f.max is not None and f.min > f.max:
                raise SpecError(f"numeric {f.name!r}: min {f.min} > max {f.max}")
        for f in self.categorical:
            if len(set(map(repr, f.vocab))) != len(f.vocab):
                raise SpecError(f"categorical {f.name!r}: vocab has duplicates")

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"version": data.pop("version"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> FeatureSpec:
        """Build from parsed JSON; unknown or missing keys are a SpecError naming ``where``."""
        try:
            data = dict(data)
            label = Label(**data.pop("label"))
            numeric = [
                NumericFeature(**f) if isinstance(f, dict) else NumericFeature(f)
                for f in data.pop("numeric", [])
            ]
            categorical = [
                CategoricalFeature(**f) if isinstance(f, dict) else CategoricalFeature(f)
                for f in data.pop("categorical", [])
            ]
            return cls(label=label, numeric=numeric, categorical=categorical, **data)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        except (TypeError, KeyError, AttributeError) as exc:
            raise SpecError(f"{where}: malformed spec: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write as indented JSON (stable key order, so diffs of edited specs stay readable)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SpecError(f"{path}: spec file not found") from None
        except ValueError as exc:
            raise SpecError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a spec is a JSON object")
        return cls.from_dict(data, where=str(path))


def _value_type(values: list[Any]) -> str:
    """The Arrow type name that holds every value of a vocabulary (JSON scalars)."""
    if values and all(isinstance(v, bool) for v in values):
        return "bool"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int64"
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "float64"
    return "string"
