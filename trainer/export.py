"""Export to the model repository: ``REPO/NAME/<version>/``, a servable program and its config.

A version directory holds::

    model.pt      TorchScript (torch.jit.save of a scripted module; loads with torch alone)
    config.json   what the server reads (below)
    spec.json     the feature spec the model was trained with (conveyor.ingest)
    stats.json    the reference statistics (normalisation, drift baselines)
    metrics.json  the training summary: per-epoch train/validation metrics, best epoch, config

Versions are integers 1, 2, 3 ...; a new one is the highest existing plus one. It is written in
a hidden temporary directory beside the versions and renamed into place (a directory rename is
atomic), so a server polling the repository never sees half a version; if another writer took
the number meanwhile, the rename fails and the next number is tried, so no version is ever
overwritten.

The program takes raw feature values in the spec's schema and does its own normalisation and
vocabulary lookup, so serving cannot drift from training. Inputs, in this order (an input is
left out when the spec has no such feature):

* ``numeric``: FP32 ``[batch, F]``, the spec's numeric features in spec order, as in the data;
* ``categorical``: BYTES ``[batch, C]``, the spec's categorical features in spec order, passed
  to the program as a flat ``List[str]`` of ``batch * C`` strings in row-major order. Values are
  their original strings; integer categories as decimal strings (``"42"``), booleans as
  ``"true"``/``"false"``. A value outside the vocabulary maps to the out-of-vocabulary id 0,
  exactly as in training (or to the feature's impute value when the spec imputes unseen
  categories; numeric imputation under the spec's policies is applied as in training too).
  Bytes that are not UTF-8 never reach the program: the server refuses the request
  (INVALID_ARGUMENT naming the input and element).

Outputs (a tuple, in this order, for classification):

* binary: ``probability`` FP32 ``[batch, 1]`` = P(label == labels[1]),
  ``logits`` FP32 ``[batch, 1]``;
* multiclass: ``probability`` FP32 ``[batch, K]`` (softmax, class order = ``labels``),
  ``logits`` FP32 ``[batch, K]``;
* regression: ``prediction`` FP32 ``[batch, 1]`` in label units (a single tensor).
"""

# No `from __future__ import annotations` here: TorchScript reads the annotations at runtime.
import errno
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conveyor import __version__
from conveyor.categories import category_key
from conveyor.ingest.profile import profiled_ranges
from conveyor.ingest.spec import FeatureSpec
from conveyor.ingest.validate import numeric_bounds
from conveyor.trainer.errors import ExportError
from conveyor.trainer.model import TabularModel, to_reference
from conveyor.trainer.names import check_model_name
from conveyor.versions import MAX_VERSION, version_directory

PLATFORM = "torchscript"


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as a Python float)."""
    return torch.tensor(value, dtype=torch.float32).item()


class _Serving(nn.Module):
    """Raw inputs -> logits: the spec's imputation and vocabulary lookup in TorchScript,
    then the training model.

    What the trainer's reader replaces with a feature's ``impute`` value under an
    ``impute`` policy, the program replaces too, or a served answer would differ from
    the trained model's on the same row: a numeric NaN or infinity (the ``nan`` or
    ``null`` rule: a null arrives as NaN) and a value outside the bounds the reader
    used (``range``: the spec's min/max, else the profiled ones); a categorical value
    outside the vocabulary (``unseen_category``) becomes the impute value's id instead
    of the out-of-vocabulary id 0. Values the reader would quarantine are served as
    they come (training never saw such rows; drift counts them)."""

    vocabs: list[dict[str, int]]
    unseen_ids: list[int]

    def __init__(
        self, model: TabularModel, spec: FeatureSpec, ranges: dict[str, tuple] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.vocabs = [
            {category_key(v): i + 1 for i, v in enumerate(f.vocab)} for f in spec.categorical
        ]
        impute_unseen = spec.policy("unseen_category") == "impute"
        self.unseen_ids = [
            vocab.get(category_key(f.impute), 0) if impute_unseen and f.impute is not None else 0
            for f, vocab in zip(spec.categorical, self.vocabs, strict=True)
        ]
        bounds = numeric_bounds(spec, ranges)
        fills, fill_nan, fill_range, lows, highs = [], [], [], [], []
        nan_rule = "impute" in (spec.policy("nan"), spec.policy("null"))
        range_rule = spec.policy("range") == "impute"
        for f in spec.numeric:
            known = f.impute is not None
            lo, hi = bounds[f.name]
            fills.append(float(f.impute) if known else 0.0)
            fill_nan.append(known and nan_rule)
            fill_range.append(known and range_rule)
            # Rounded to float32 as the FP32 inputs are (monotone: lo <= x <= hi keeps
            # f32(lo) <= f32(x) <= f32(hi)); float32(0.3) > 0.3, so a value at the bound,
            # in range for the reader, was imputed here.
            lows.append(float("-inf") if lo is None else _float32(lo))
            highs.append(float("inf") if hi is None else _float32(hi))
        self.imputes = any(fill_nan) or any(fill_range)
        self.register_buffer("fill_value", torch.tensor(fills, dtype=torch.float32))
        self.register_buffer("fill_nan", torch.tensor(fill_nan, dtype=torch.bool))
        self.register_buffer("fill_range", torch.tensor(fill_range, dtype=torch.bool))
        self.register_buffer("low", torch.tensor(lows, dtype=torch.float64))
        self.register_buffer("high", torch.tensor(highs, dtype=torch.float64))
        self.n_numeric = len(spec.numeric)
        self.n_categorical = len(spec.categorical)
        self.multiclass = spec.label.task == "multiclass"
        self.label_mean = model.label_mean
        self.label_std = model.label_std

    def _ids(self, categorical: list[str], batch: int) -> torch.Tensor:
        c = self.n_categorical
        if len(categorical) != batch * c:
            raise ValueError(
                "categorical: expected batch * " + str(c) + " strings, got " + str(len(categorical))
            )
        ids: list[int] = []
        for i, value in enumerate(categorical):
            ids.append(self.vocabs[i % c].get(value, self.unseen_ids[i % c]))
        return torch.tensor(ids, dtype=torch.long).reshape(batch, c)

    def _numeric(self, numeric: torch.Tensor) -> torch.Tensor:
        if numeric.dim() != 2 or numeric.shape[1] != self.n_numeric:
            raise ValueError("numeric: expected shape [batch, " + str(self.n_numeric) + "]")
        if not self.imputes:
            return numeric.to(torch.float32)
        # Against bounds rounded to float32 (see __init__): an FP32 input meets them as
        # the reader met the column's float64 value.
        wide = numeric.to(torch.float64)
        missing = ~torch.isfinite(wide) & self.fill_nan
        outside = ((wide < self.low) | (wide > self.high)) & self.fill_range
        return torch.where(missing | outside, self.fill_value, wide.to(torch.float32))

    def _logits(self, numeric: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.model(numeric, ids).float()

    def _classify(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.multiclass:
            return torch.softmax(logits, dim=1), logits
        return torch.sigmoid(logits), logits

    def _regress(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.label_std + self.label_mean


# One small class per input/output combination: a TorchScript forward has one fixed signature.
class ClassifierNumCat(_Serving):
    def forward(
        self, numeric: torch.Tensor, categorical: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._numeric(numeric)
        return self._classify(self._logits(x, self._ids(categorical, x.shape[0])))


class ClassifierNum(_Serving):
    def forward(self, numeric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._numeric(numeric)
        return self._classify(self._logits(x, torch.zeros(x.shape[0], 0, dtype=torch.long)))


class ClassifierCat(_Serving):
    def forward(self, categorical: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = len(categorical) // self.n_categorical
        ids = self._ids(categorical, batch)
        return self._classify(self._logits(torch.zeros(batch, 0), ids))


class RegressorNumCat(_Serving):
    def forward(self, numeric: torch.Tensor, categorical: list[str]) -> torch.Tensor:
        x = self._numeric(numeric)
        return self._regress(self._logits(x, self._ids(categorical, x.shape[0])))


class RegressorNum(_Serving):
    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        x = self._numeric(numeric)
        return self._regress(self._logits(x, torch.zeros(x.shape[0], 0, dtype=torch.long)))


class RegressorCat(_Serving):
    def forward(self, categorical: list[str]) -> torch.Tensor:
        batch = len(categorical) // self.n_categorical
        return self._regress(self._logits(torch.zeros(batch, 0), self._ids(categorical, batch)))


def serving_module(
    model: TabularModel, spec: FeatureSpec, stats: dict[str, Any] | None = None
) -> torch.jit.ScriptModule:
    """The scripted serving program for ``model`` (moved to CPU, in eval mode); ``stats``
    (the profile) gives the bounds of features without a declared min/max."""
    import copy

    model = to_reference(copy.deepcopy(model)).cpu().eval()
    for p in model.parameters():  # a served call builds no autograd graph
        p.requires_grad_(False)
    has_num, has_cat = bool(spec.numeric), bool(spec.categorical)
    if not (has_num or has_cat):
        raise ExportError("the spec has no features: nothing to serve")
    regression = spec.label.task == "regression"
    table = {
        (False, True, True): ClassifierNumCat,
        (False, True, False): ClassifierNum,
        (False, False, True): ClassifierCat,
        (True, True, True): RegressorNumCat,
        (True, True, False): RegressorNum,
        (True, False, True): RegressorCat,
    }
    ranges = profiled_ranges(stats) if stats else {}
    module = table[(regression, has_num, has_cat)](model, spec, ranges).eval()
    return torch.jit.script(module)


def _arrow_type_name(spec_type: Any) -> str:
    return str(spec_type) if spec_type is not None else "unknown"


def model_config(
    spec: FeatureSpec,
    name: str,
    *,
    max_batch_size: int = 1024,
    source_types: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` dict (see the module docstring for inputs and outputs)."""
    types = source_types or {}
    inputs = []
    # `columns` lets the server and the SDK build these tensors from a dict of columns.
    if spec.numeric:
        inputs.append(
            {
                "name": "numeric",
                "datatype": "FP32",
                "shape": [len(spec.numeric)],
                "columns": spec.numeric_names,
            }
        )
    if spec.categorical:
        inputs.append(
            {
                "name": "categorical",
                "datatype": "BYTES",
                "shape": [len(spec.categorical)],
                "columns": spec.categorical_names,
            }
        )
    task = spec.label.task
    classes = [category_key(c) for c in spec.label.classes or []]
    if task == "regression":
        outputs = [{"name": "prediction", "datatype": "FP32", "shape": [1]}]
    else:
        k = 1 if task == "binary" else len(classes)
        outputs = [
            {"name": "probability", "datatype": "FP32", "shape": [k]},
            {"name": "logits", "datatype": "FP32", "shape": [k]},
        ]
    features = [
        {
            "name": f.name,
            "kind": "numeric",
            "input": "numeric",
            "index": j,
            "datatype": "FP32",
            "source_type": _arrow_type_name(types.get(f.name)),
        }
        for j, f in enumerate(spec.numeric)
    ] + [
        {
            "name": f.name,
            "kind": "categorical",
            "input": "categorical",
            "index": j,
            "datatype": "BYTES",
            "source_type": _arrow_type_name(types.get(f.name)),
            "vocab_size": len(f.vocab),
        }
        for j, f in enumerate(spec.categorical)
    ]
    preferred = [b for b in (16, 64, 256) if b < max_batch_size] + [max_batch_size]
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORM,
        "max_batch_size": max_batch_size,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_batching": {
            "max_queue_delay_microseconds": 1000,
            "preferred_batch_size": preferred,
            "max_queue_size": 4 * max_batch_size,
            "priority_levels": 1,
            "default_priority_level": 1,
        },
        "instance_count": 1,
        "features": features,
        "parameters": {
            "task": task,
            "label": spec.label.name,
            "categorical_encoding": "original strings; integers as decimal strings, booleans as "
            "true/false; unknown values map to the out-of-vocabulary id",
            "conveyor_version": __version__,
        },
    }
    if task != "regression":
        config["labels"] = classes
        if task == "binary":
            config["parameters"]["positive_class"] = classes[1]
    return config


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def existing_versions(model_dir: str | Path) -> list[int]:
    """Version directories under ``model_dir`` that the engine serves, ascending; other
    names (``tmp``, ``01``, a number past 2**63 - 1) are skipped."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = ((version_directory(p.name), p) for p in model_dir.iterdir())
    return sorted(v for v, p in found if v is not None and p.is_dir())


def export_version(
    repository: str | Path,
    name: str,
    model: TabularModel,
    spec: FeatureSpec,
    stats: dict[str, Any],
    metrics: dict[str, Any],
    *,
    max_batch_size: int = 1024,
    source_types: dict[str, str] | None = None,
) -> Path:
    """Write a new version of ``name`` under ``repository``; returns its directory."""
    check_model_name(name)
    repository = Path(repository)
    model_dir = repository / name
    # Built beside the models, not inside the model's directory: a poll-mode server that
    # saw a new model's directory before its first version was published logged a failed
    # load ("no version available") for as long as scripting and saving took. A name
    # starting with a dot is no model name, so the server never looks at it.
    tmp = repository / f".tmp-{name}-{uuid.uuid4().hex}"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ExportError(f"cannot create {tmp}: {exc.strerror}") from None
    try:
        with warnings.catch_warnings():
            # torch 2.10+ marks TorchScript deprecated; it is still the contract the engine loads.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")
            program = serving_module(model, spec, stats)
            torch.jit.save(program, str(tmp / "model.pt"))
        config = model_config(spec, name, max_batch_size=max_batch_size, source_types=source_types)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "spec.json", spec.to_dict())
        _write_json(tmp / "stats.json", stats)
        _write_json(tmp / "metrics.json", metrics)
        with open(tmp / "model.pt", "rb") as fh:
            os.fsync(fh.fileno())
        try:
            model_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise ExportError(f"cannot create {model_dir}: {exc.strerror}") from None
        return _publish(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, model_dir: Path) -> Path:
    """Rename ``tmp`` to the next free version number; a number taken meanwhile is skipped."""
    version = (existing_versions(model_dir) or [0])[-1] + 1
    for _ in range(1000):
        if version > MAX_VERSION:
            raise ExportError(
                f"{model_dir}: no version number left (the engine serves up to 2**63 - 1)"
            )
        target = model_dir / str(version)
        if not target.exists():
            try:
                os.rename(tmp, target)  # refuses a non-empty directory that appeared meanwhile
                return target
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise ExportError(f"cannot publish {target}: {exc.strerror}") from None
        version += 1
    raise ExportError(f"{model_dir}: no free version number found")
