"""Load one model version (TorchScript or torch.export, never a pickle) and run batches on it.

The model-version directory contract (written by the trainer) is documented in
``engine/README.md``. In short: ``model.pt`` (TorchScript) or ``model.pt2``
(torch.export) plus ``config.json``; the forward takes the inputs in config
order as ``[batch, ...]`` tensors, a BYTES input ``[batch, C]`` as a flat
``List[str]`` of ``batch * C`` strings in row-major order, and returns the
outputs in config order (a tensor, or a tuple/list of them; a BYTES output as
a flat ``List[str]``, row-major).
"""

from __future__ import annotations

import math
import threading
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conveyor.engine.accelerators import accelerate
from conveyor.engine.errors import Internal, InvalidArgument, ModelLoadError
from conveyor.engine.model_config import ModelConfig, TensorSpec, load_config
from conveyor.engine.tensors import NUMPY_DTYPES

PROGRAM_FILES = {"torchscript": "model.pt", "torch_export": "model.pt2"}
# Files a version directory may hold; anything else that looks like a model
# (a pickle, a state dict) is refused rather than ignored, so nobody believes it is served.
_REFUSED_SUFFIXES = (".pkl", ".pickle", ".pth", ".joblib", ".bin", ".ckpt", ".safetensors")
SIDE_FILES = ("spec.json", "stats.json")


def _converts_faithfully(got: np.dtype, want: np.dtype) -> bool:
    """Whether an output array of ``got`` may be served as ``want``: the same type, a cast
    numpy calls safe (bool to int, int to a wider int or to float, float32 to float64), or
    a float of another precision (a float64 model behind an FP32 config). Not float to int
    or bool, int to bool, or a narrower or unsigned int: those change values. BYTES outputs
    (object arrays) are not judged here."""
    if got == want or want.kind == "O" or np.can_cast(got, want, casting="safe"):
        return True
    return got.kind == "f" and want.kind == "f"


@dataclass(frozen=True)
class VersionFiles:
    """Where a version's files are; ``spec``/``stats`` (from ingest, for drift) may be None."""

    directory: Path
    program: Path
    config: Path
    spec: Path | None
    stats: Path | None


def _locate(directory: Path, config: ModelConfig) -> VersionFiles:
    refused = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in _REFUSED_SUFFIXES)
    if refused:
        raise ModelLoadError(
            f"{directory}: refusing {', '.join(refused)}: only TorchScript (model.pt) or "
            "torch.export (model.pt2) programs are served, never pickles"
        )
    program = directory / PROGRAM_FILES[config.platform]
    if not program.is_file():
        raise ModelLoadError(
            f"{directory}: platform {config.platform!r} needs {program.name}, which is missing"
        )
    if not zipfile.is_zipfile(program):
        raise ModelLoadError(
            f"{program}: not a {config.platform} archive (TorchScript and torch.export "
            "programs are zip archives)"
        )
    kind = archive_kind(program)
    if kind is not None and kind != config.platform:
        raise ModelLoadError(f"{program}: {_wrong_kind(kind, config.platform)}")
    side = {name: directory / name for name in SIDE_FILES}
    return VersionFiles(
        directory=directory,
        program=program,
        config=directory / "config.json",
        spec=side["spec.json"] if side["spec.json"].is_file() else None,
        stats=side["stats.json"] if side["stats.json"].is_file() else None,
    )


# What each kind of torch zip archive is, for messages; each kind's file and platform.
_KINDS = {
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "torch_export": "a torch.export program (torch.export.save)",
    "torch_save": "a torch.save checkpoint (pickled Python objects, never loaded here)",
}
_EXPECTED = {
    "torchscript": "platform 'torchscript' serves model.pt written by "
    "torch.jit.save(torch.jit.script(module))",
    "torch_export": "platform 'torch_export' serves model.pt2 written by "
    "torch.export.save(torch.export.export(module, example_inputs))",
}


def archive_kind(path: Path) -> str | None:
    """What a torch zip archive holds, from its member names (nothing is unpickled):
    ``torchscript``, ``torch_export``, ``torch_save``, or None when unrecognised.

    Every member sits under one top folder (the file's stem when written). TorchScript
    archives have ``code/`` and ``constants.pkl``; torch.export's pt2 archives an
    ``archive_format`` and ``models/``; a torch.save checkpoint only ``data.pkl`` and
    its tensors.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    inner = {n.split("/", 1)[1] for n in names if "/" in n}
    if "archive_format" in inner or any(n.startswith("models/") for n in inner):
        return "torch_export"
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return "torchscript"
    if "data.pkl" in inner:
        return "torch_save"
    return None


def _wrong_kind(kind: str, platform: str) -> str:
    """``not a torch.export program: it is a TorchScript archive ...; platform ...``."""
    wanted = "TorchScript archive" if platform == "torchscript" else "torch.export program"
    message = f"not a {wanted}: it is {_KINDS[kind]}; {_EXPECTED[platform]}"
    if kind in PROGRAM_FILES:  # the other program kind: say how to serve it as it is
        message += (
            f" (to serve this file as it is: name it {PROGRAM_FILES[kind]} and set "
            f"platform {kind!r})"
        )
    return message


def _load_program(files: VersionFiles, platform: str) -> Any:
    import torch

    try:
        if platform == "torchscript":
            # TorchScript archives hold code and tensors; torch.jit.load does not
            # unpickle arbitrary Python objects.
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; it still works
                warnings.simplefilter("ignore", DeprecationWarning)
                program = torch.jit.load(str(files.program), map_location="cpu")
            program.eval()
            return program
        exported = torch.export.load(str(files.program))
        return exported.module()
    except Exception as exc:
        kind = "TorchScript" if platform == "torchscript" else "torch.export"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{files.program}: cannot load as {kind}: {first}") from None


class Model:
    """One loaded model version: its config, files and program; :meth:`run` executes a batch.

    ``run`` is called from the batcher's worker threads (one per instance); the
    program is shared by them, which TorchScript and exported modules allow.
    """

    def __init__(
        self, name: str, version: int, directory: Path, config: ModelConfig | None = None
    ) -> None:
        """``config``: the configuration to serve with (RepositoryModelLoad's ``config``
        parameter, server overrides applied); None reads the version's config.json."""
        self.name = name
        self.version = version
        self.config = load_config(directory / "config.json") if config is None else config
        if self.config.name != name:
            source = directory / "config.json" if config is None else "the configuration"
            raise ModelLoadError(
                f"{source}: name {self.config.name!r} does not match the model directory {name!r}"
            )
        self.files = _locate(directory, self.config)
        self.program = _load_program(self.files, self.config.platform)
        self._holders = threading.local()
        # conveyor's kernels in place of the program, or of parts of it, when config.json
        # asks for an accelerator (and it applies; else the load fails).
        accelerated = accelerate(self.program, self.config, str(directory))
        self.accelerator = None if accelerated is None else accelerated.describe
        self.accelerated = None if accelerated is None else accelerated.run
        if accelerated is not None and accelerated.program is not None:
            self.program = accelerated.program
        self.warm_up()

    def warm_up(self) -> None:
        """Run batches of zeros (empty strings for BYTES) of 1 row, 2 rows and
        ``max_batch_size`` rows, so a program that does not match its config fails at
        load time, not on the first request: wrong inputs or outputs fail at one row,
        a program that takes only some batch sizes (a torch.export program traced
        without a dynamic batch dim takes only its example's) at the others. Each batch
        size runs once. The largest is capped at ``WARM_UP_BYTES`` of inputs (at least
        2 rows): a max_batch_size of 2**30 is a valid setting, not a batch to allocate."""
        mbs = self.config.max_batch_size
        largest = min(mbs, max(2, WARM_UP_BYTES // _row_bytes(self.config.inputs)))
        for rows in sorted({1, min(2, mbs), largest}):
            try:
                batch = [_zeros(spec, rows) for spec in self.config.inputs]
                self.run(batch)
            except Internal as exc:
                if rows == 1:
                    raise ModelLoadError(
                        f"{self.files.program}: warm-up with one row of zeros failed: {exc.message}"
                    ) from None
                raise ModelLoadError(
                    f"{self.files.program}: the program does not accept batch size {rows} "
                    f"(max_batch_size {mbs}; a torch.export program needs a dynamic batch "
                    f"dim, torch.export.Dim): warm-up with {rows} rows of zeros failed: "
                    f"{exc.message}"
                ) from None
            except MemoryError:
                raise ModelLoadError(
                    f"{self.files.program}: out of memory in warm-up with {rows} rows of zeros"
                ) from None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Execute one batch. ``inputs`` follow config order, each ``[batch, ...]``.

        Returns one array per configured output, each ``[batch, ...]``. Raises
        :class:`Internal` with the model's message when the program raises or
        returns something that does not match the config.
        """
        import torch

        batch = len(inputs[0])
        if self.accelerated is not None:
            try:
                arrays = self.accelerated(list(inputs))
            except Exception as exc:
                raise Internal(
                    f"model {self.name!r} version {self.version} raised: {_message(exc)}"
                ) from None
            for spec, array in zip(self.config.outputs, arrays, strict=True):
                self._check_numbers(spec, array, inputs)
            return arrays
        args: list[Any] = []
        for spec, array in zip(self.config.inputs, inputs, strict=True):
            if spec.datatype == "BYTES":
                args.append([_text(v) for v in array.reshape(-1).tolist()])
            else:
                args.append(torch.from_numpy(array))
        holder = self._holder() if self.config.platform == "torchscript" else None
        try:
            if holder is not None:
                holder.tensors = [a for a in args if isinstance(a, torch.Tensor)]
            with torch.inference_mode():
                result = self.program(*args)
        except Exception as exc:
            raise Internal(
                f"model {self.name!r} version {self.version} raised: {_message(exc)}"
            ) from None
        finally:
            if holder is not None:
                holder.tensors = []
        return self._outputs(result, batch, inputs)

    def _holder(self) -> Any:
        """This thread's keep-alive for the input tensors of a TorchScript call.

        A tensor made in Python has a PyObject; when C++ drops its second-to-last
        reference, torch decrefs that PyObject, which takes the GIL. The TorchScript
        interpreter drops each input after its last use, inside the call that runs
        without the GIL, so every batch stalled mid-forward until the event loop let
        go of the GIL. A third reference held in C++ (a TorchScript attribute, set
        and cleared with the GIL held) moves that decref out of the forward.
        """
        holder = getattr(self._holders, "module", None)
        if holder is None:
            holder = self._holders.module = _new_holder()
        return holder

    def _outputs(self, result: Any, batch: int, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        specs = self.config.outputs
        if len(specs) == 1 and specs[0].datatype == "BYTES" and _is_strings(result):
            items = [result]  # one BYTES output: the list is the output, not a tuple of them
        else:
            items = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(items) != len(specs):
            raise Internal(
                f"model {self.name!r} returned {len(items)} outputs, config lists {len(specs)}"
            )
        arrays = []
        for spec, item in zip(specs, items, strict=True):
            if spec.datatype == "BYTES":
                arrays.append(self._strings(spec, item, batch))
                continue
            if not isinstance(item, torch.Tensor):
                raise Internal(
                    f"model {self.name!r} output {spec.name!r}: expected a tensor, "
                    f"got {type(item).__name__}"
                )
            if item.dim() == 0 or item.shape[0] != batch:
                raise Internal(
                    f"model {self.name!r} output {spec.name!r}: shape {list(item.shape)} "
                    f"has no batch dim of {batch}"
                )
            got = tuple(item.shape[1:])
            if got != spec.shape and (
                len(got) != len(spec.shape)
                or any(w != -1 and g != w for g, w in zip(got, spec.shape, strict=True))
            ):
                # Served as is, the response's shape would contradict the model's metadata.
                raise Internal(
                    f"model {self.name!r} output {spec.name!r}: shape {list(item.shape)} does "
                    f"not match the config's [batch, {', '.join(map(str, spec.shape))}]"
                )
            # Under inference_mode the output is a CPU tensor without grad: .numpy() is a
            # view. detach()/cpu() are only called when needed, since each is a dispatcher
            # call that drops and retakes the GIL (a hand-off to the busy event loop).
            if item.requires_grad:
                item = item.detach()
            if not item.is_cpu:
                item = item.cpu()
            array = item.numpy()
            want = NUMPY_DTYPES[spec.datatype]
            if not _converts_faithfully(array.dtype, np.dtype(want)):
                # Cast anyway, probabilities declared INT64 were served as zeros and as
                # BOOL as True: a wrong answer with an OK status (Triton refuses it too).
                raise Internal(
                    f"model {self.name!r} output {spec.name!r}: the model returns "
                    f"{array.dtype}, which the config's datatype {spec.datatype} cannot hold "
                    "without changing its values; declare the datatype the model returns"
                )
            self._check_numbers(spec, array, inputs)
            arrays.append(np.ascontiguousarray(array, dtype=want))
        return arrays

    def _check_numbers(
        self, spec: TensorSpec, array: np.ndarray, inputs: Sequence[np.ndarray]
    ) -> None:
        """A NaN output fails the batch: INVALID_ARGUMENT naming the input when an input
        holds NaN or inf (the client sent it: not a server error for the alerts), else
        INTERNAL (a broken model, not an answer). The batcher re-runs a failed batch
        request by request, so each request is judged on its own inputs and outputs,
        and only those producing NaN fail. The inputs are looked at only here, once an
        output is NaN, so a batch that succeeds pays nothing for it."""
        if array.dtype.kind == "f" and np.isnan(array).any():
            bad_input = self._non_finite_input(inputs)
            if bad_input is not None:
                raise InvalidArgument(
                    f"{bad_input}; model {self.name!r} returned NaN for output {spec.name!r}"
                )
            raise Internal(f"model {self.name!r} output {spec.name!r}: the model returned NaN")

    def _non_finite_input(self, inputs: Sequence[np.ndarray]) -> str | None:
        """``input 'x' contains NaN (first at row 3, column 'amount')`` for the first
        floating-point input holding NaN or +-inf (config order), else None. The row is the
        request's (a failed batch is re-run request by request); the column is named from
        config.json's ``columns``, so a client sees which cell of its table to fix."""
        for spec, array in zip(self.config.inputs, inputs, strict=True):
            if array.dtype.kind != "f":
                continue
            kinds = [k for k, test in (("NaN", np.isnan), ("inf", np.isinf)) if test(array).any()]
            if kinds:
                first = np.argwhere(~np.isfinite(array))[0]
                where = f"row {int(first[0])}" if len(first) else ""
                if spec.columns and array.ndim == 2:
                    where += f", column {spec.columns[int(first[1])]!r}"
                return f"input {spec.name!r} contains {' and '.join(kinds)} (first at {where})"
        return None

    def _strings(self, spec: TensorSpec, item: Any, batch: int) -> np.ndarray:
        """A BYTES output: a flat list of ``batch * prod(shape)`` strings, row-major."""
        if not _is_strings(item):
            raise Internal(
                f"model {self.name!r} output {spec.name!r}: a BYTES output must be a "
                f"List[str], got {type(item).__name__}"
            )
        count = len(item)
        per_row = count // batch if batch else 0
        dims = ", ".join(map(str, spec.shape))
        if -1 in spec.shape:
            if len(spec.shape) != 1:
                raise Internal(f"output {spec.name!r}: BYTES outputs are [-1] or fixed-shape")
            shape: tuple[int, ...] = (batch, per_row)
        else:
            shape = (batch, *spec.shape)
        if count != math.prod(shape):
            raise Internal(
                f"model {self.name!r} output {spec.name!r}: {count} strings do not fill "
                f"[{batch}, {dims}]"
            )
        array = np.empty(len(item), dtype=object)
        array[:] = [s.encode() if isinstance(s, str) else bytes(s) for s in item]
        return array.reshape(shape)


def _new_holder() -> Any:
    import torch

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tensors = [torch.zeros(0)]  # a non-empty list: TorchScript infers List[Tensor]

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(Holder())


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (str, bytes)) for v in value)


def _message(exc: Exception) -> str:
    """The model's own error: TorchScript wraps it in two tracebacks, ending with
    ``builtins.RuntimeError: <message>``; keep that last line."""
    text = str(exc).strip()
    if "Traceback of TorchScript" in text:
        return text.splitlines()[-1].strip()
    return text or type(exc).__name__


def _text(value: Any) -> str:
    # Strict: a request's BYTES elements were checked to be UTF-8 (validation.py), so
    # nothing is replaced; the warm-up's are empty.
    return value.decode() if isinstance(value, bytes) else str(value)


# Most bytes of inputs the largest warm-up batch holds (see Model.warm_up).
WARM_UP_BYTES = 16 * 1024 * 1024


def _row_bytes(specs: Sequence[TensorSpec]) -> int:
    """Bytes of one row of inputs; a BYTES element counts as one object pointer."""
    total = 0
    for spec in specs:
        size = NUMPY_DTYPES[spec.datatype].itemsize if spec.datatype != "BYTES" else 8
        for d in spec.shape:
            size *= 1 if d == -1 else d
        total += size
    return max(total, 1)


def _zeros(spec: TensorSpec, rows: int = 1) -> np.ndarray:
    shape = (rows, *(1 if d == -1 else d for d in spec.shape))
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
