"""Execution accelerators: run a loaded program through conveyor's own kernels.

A model asks for one in its ``config.json`` with Triton's vocabulary::

    "optimization": {"execution_accelerators":
        {"cpu_execution_accelerator": [{"name": "conveyor_mlp"}]}}

``conveyor_mlp``: a TorchScript program that is an ``nn.Sequential`` (nested ones
allowed) of ``nn.Linear`` layers, each followed by at most one of ``ReLU``,
``GELU``, ``SiLU``, ``Sigmoid``, ``Tanh`` (``Dropout`` and ``Identity`` are skipped:
the program runs in eval mode), or a torch.export program whose graph is the same
chain (``aten.linear`` and those activations, eval-mode dropout), float32, one FP32
input and one FP32 output, runs as one :class:`conveyor.kernels.PackedMLP` call per
batch: the weights packed once, no interpreter, the GIL released for the whole
forward (about 2x the TorchScript program's forward at batch 1-512 on this
machine, see benchmarks/README.md). Any other torch.export program keeps its
graph, with each chain of ``aten.linear`` (+ activation) nodes inside it replaced
by one ``PackedMLP`` call (1.4-2.0x for a standardise + MLP + two-output program
at batch 1-512).

Asked for and not applicable, the load fails with the reason: a model that asked
to be accelerated is never silently served another way. Before it serves, the
accelerated path is checked against the program on a row of zeros and 64 random
rows (integer inputs stay 0); outputs further apart than float32 reordering
explains fail the load too.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from conveyor.engine.errors import ModelLoadError
from conveyor.engine.model_config import ModelConfig

ACCELERATORS = ("conveyor_mlp",)

# Type names TorchScript gives torch.nn's modules (after removing its mangling of
# same-named types, e.g. a Linear without bias next to one with).
_MANGLE = re.compile(r"___torch_mangle_\d+\.")
_NN = "__torch__.torch.nn.modules."
_ACTIVATIONS = {
    _NN + "activation.ReLU": "relu",
    _NN + "activation.SiLU": "silu",
    _NN + "activation.Sigmoid": "sigmoid",
    _NN + "activation.Tanh": "tanh",
}
_SKIPPED = (_NN + "dropout.Dropout", _NN + "linear.Identity")
# float32 GEMMs summed in another order: relative differences of a few 1e-7 per layer.
_RTOL, _ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Accelerated:
    """A model's batches run through conveyor's kernels instead of its program.

    Attributes:
        describe: what runs, for logs (e.g. ``conveyor_mlp 64-256-256-1``).
        run: config-order input arrays ``[batch, ...]`` -> config-order output arrays,
            when the whole program is replaced; else None and ``program`` is set.
        program: the loaded program with parts of it replaced, run as programs are.
    """

    describe: str
    run: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None
    program: Any = None  # a rewritten program that replaces the loaded one (run is None)


def _type_name(module: Any) -> str:
    try:
        return _MANGLE.sub("", module._c._type().qualified_name())
    except AttributeError:  # not a TorchScript module
        return type(module).__module__ + "." + type(module).__qualname__


def _flatten(module: Any, where: str) -> list[tuple[str, Any]]:
    """The leaf modules of nested Sequentials, in order, with their paths."""
    leaves = []
    for name, child in module.named_children():
        path = f"{where}.{name}" if where else name
        if _type_name(child) == _NN + "container.Sequential":
            leaves += _flatten(child, path)
        else:
            leaves.append((path, child))
    return leaves


def mlp_layers(program: Any) -> list[tuple[Any, Any, str]]:
    """``[(weight, bias or None, activation), ...]`` of a TorchScript Sequential MLP,
    or of a torch.export program's graph of the same chain.

    Raises ``ValueError`` naming the first module or graph node that does not fit.
    """
    import torch

    if isinstance(program, torch.fx.GraphModule):
        layers = _graph_layers(program)
    else:
        layers = _script_layers(program)
    if not layers:
        raise ValueError("the program has no Linear layer")
    for i, (w, b, _) in enumerate(layers):
        for t in (w, b):
            if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
                raise ValueError(
                    f"Linear {i}: float32 CPU parameters needed, got {t.dtype} on {t.device}"
                )
    return [(w, b, act) for w, b, act in layers]


def _aten_activation(node: Any) -> str | None:
    """The MLP activation (a key of ``MLP_ACTIVATIONS``) a graph node applies to its
    one argument, or None."""
    import torch

    aten = torch.ops.aten
    if node.op != "call_function" or len(node.args) != 1:
        return None
    if node.target == aten.gelu.default:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(node.kwargs.get("approximate", "none"))
    unary = {
        aten.relu.default: "relu",
        aten.silu.default: "silu",
        aten.sigmoid.default: "sigmoid",
        aten.tanh.default: "tanh",
    }
    return None if node.kwargs else unary.get(node.target)


def _attribute(gm: Any, node: Any) -> Any:
    """The module attribute a ``get_attr`` node reads (a dotted path)."""
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def _graph_layers(gm: Any) -> list[list[Any]]:
    """An exported program's graph that is one Linear chain (``_find_chains``) from its
    only input to its only output, with nothing else beside export's input guards."""
    chains = _find_chains(gm)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    (result,) = next(n for n in gm.graph.nodes if n.op == "output").args
    if isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]
    computed = [
        n
        for n in gm.graph.nodes
        if n.op in ("call_function", "call_method", "call_module") and n.target != "_guards_fn"
    ]
    if (
        len(chains) != 1
        or inputs != [chains[0].source]
        or result is not chains[0].nodes[-1]
        or len(computed) != len(chains[0].nodes)
    ):
        raise ValueError("the graph is not one Linear chain from its input to its output")
    return chains[0].layers


def _script_layers(program: Any) -> list[list[Any]]:
    """A TorchScript nn.Sequential (nested ones flattened) of Linear + activation modules."""
    if _type_name(program) != _NN + "container.Sequential":
        kind = getattr(program, "original_name", type(program).__name__)
        raise ValueError(f"the program is a {kind}, not a TorchScript nn.Sequential")
    from conveyor.kernels.mlp import fold_layers

    def parts() -> Iterator[tuple[str, str, Any]]:
        for path, child in _flatten(program, ""):
            kind = _type_name(child)
            if kind in _SKIPPED:
                continue
            if kind == _NN + "linear.Linear":
                yield path, child.original_name, (child.weight, child.bias)
                continue
            act = _ACTIVATIONS.get(kind)
            if kind == _NN + "activation.GELU":
                act = {"none": "gelu", "tanh": "gelu_tanh"}.get(child.approximate)
            yield path, child.original_name, act

    return [list(layer) for layer in fold_layers(parts())]


def conveyor_mlp(program: Any, config: ModelConfig, where: str) -> Accelerated:
    """``program`` as one PackedMLP call per batch, checked against it; raises
    :class:`ModelLoadError` when it does not apply."""
    import torch

    from conveyor.kernels import PackedMLP

    def refuse(reason: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: execution accelerator conveyor_mlp: {reason}")

    if _is_graph(program):
        try:
            _graph_layers(program)
        except ValueError:
            return rewrite_chains(program, config, refuse)
    if len(config.inputs) != 1 or len(config.outputs) != 1:
        raise refuse("needs exactly one input and one output")
    (inp,), (out,) = config.inputs, config.outputs
    if (
        inp.datatype != "FP32"
        or out.datatype != "FP32"
        or len(inp.shape) != 1
        or len(out.shape) != 1
    ):
        raise refuse("needs an FP32 input [batch, K] and an FP32 output [batch, N]")
    try:
        packed = PackedMLP(mlp_layers(program))
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if (packed.in_features, packed.out_features) != (inp.shape[0], out.shape[0]):
        raise refuse(
            f"the layers map {packed.in_features} -> {packed.out_features} features, the "
            f"config {inp.name} {list(inp.shape)} -> {out.name} {list(out.shape)}"
        )

    def serving(x: Any) -> Any:  # what Model.run will call, on torch tensors
        return torch.from_numpy(packed.run(x.numpy()))

    _check_program(program, serving, config, refuse, "its")
    return Accelerated(
        describe="conveyor_mlp " + "-".join(map(str, packed.dims)),
        run=lambda inputs: [packed.run(inputs[0])],
    )


def _is_graph(program: Any) -> bool:
    import torch

    return isinstance(program, torch.fx.GraphModule)


class _Chain:
    """Consecutive graph nodes computing Linear (+ activation) layers on one input."""

    def __init__(self, source: Any) -> None:
        self.source = source  # the node the first Linear reads
        self.nodes: list[Any] = []
        self.layers: list[list[Any]] = []


def _find_chains(gm: Any) -> list[_Chain]:
    """Every maximal run of ``aten.linear`` nodes with float32 parameters, each followed
    by at most one supported activation (eval-mode dropout skipped), whose intermediate
    values have no other user."""
    import torch

    aten = torch.ops.aten

    def param(node: Any) -> Any:
        if node is None:
            return None
        if getattr(node, "op", None) != "get_attr":
            return False
        value = _attribute(gm, node)
        ok = isinstance(value, torch.Tensor) and value.dtype == torch.float32
        return value if ok and value.device.type == "cpu" else False

    def linear(node: Any) -> list[Any] | None:
        if node.op != "call_function" or node.target != aten.linear.default:
            return None
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        w, b = param(node.args[1]), param(bias)
        return None if w is False or b is False else [w, b, "none"]

    chains: list[_Chain] = []
    taken: set[Any] = set()
    for node in gm.graph.nodes:
        first = None if node in taken else linear(node)
        if first is None:
            continue
        chain = _Chain(node.args[0])
        chain.nodes.append(node)
        chain.layers.append(first)
        cur = node
        while len(cur.users) == 1:
            (user,) = cur.users
            if user.op != "call_function" or not user.args or user.args[0] is not cur:
                break
            act = _aten_activation(user)
            nxt = linear(user)
            if user.target == aten.dropout.default and len(user.args) > 2 and not user.args[2]:
                pass  # eval mode: the identity
            elif act is not None and chain.layers[-1][2] == "none":
                chain.layers[-1][2] = act
            elif nxt is not None:
                chain.layers.append(nxt)
            else:
                break
            chain.nodes.append(user)
            cur = user
        taken.update(chain.nodes)
        chains.append(chain)
    return chains


def rewrite_chains(
    gm: Any, config: ModelConfig, refuse: Callable[[str], ModelLoadError]
) -> Accelerated:
    """Each Linear chain in an exported program's graph becomes one PackedMLP call; the
    rest of the graph runs as before. Checked against the original on synthetic inputs."""
    import copy

    from conveyor.kernels import PackedMLP

    if any(t.datatype == "BYTES" for t in (*config.inputs, *config.outputs)):
        raise refuse("a torch.export program with BYTES tensors cannot be checked; not applied")
    with warnings.catch_warnings():  # torch's pytree specs warn about their own deepcopy
        warnings.simplefilter("ignore", FutureWarning)
        original = copy.deepcopy(gm)
    chains = _find_chains(gm)
    if not chains:
        raise refuse("the graph has no aten.linear with float32 parameters to run")
    described = []
    for i, chain in enumerate(chains):
        packed = PackedMLP([tuple(layer) for layer in chain.layers])
        name = f"conveyor_mlp_{i}"
        gm.add_submodule(name, _packed_module(packed))
        # The first node's input, read now: a chain rewritten before this one may have
        # replaced it (a shared trunk feeding several heads), which chain.source missed.
        with gm.graph.inserting_before(chain.nodes[0]):
            call = gm.graph.call_module(name, (chain.nodes[0].args[0],))
        chain.nodes[-1].replace_all_uses_with(call)
        for node in reversed(chain.nodes):
            params = [a for a in node.args[1:] if getattr(a, "op", None) == "get_attr"]
            gm.graph.erase_node(node)
            for a in params:
                if not a.users:
                    gm.graph.erase_node(a)
        described.append("-".join(map(str, packed.dims)))
    gm.recompile()
    _check_program(original, gm, config, refuse, "the rewritten graph's")
    return Accelerated(describe="conveyor_mlp " + ", ".join(described), program=gm)


def _packed_module(packed: Any) -> Any:
    """A graph's call into one PackedMLP, as a module (FX calls modules by name)."""
    import torch

    class PackedModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.packed = packed

        def forward(self, x: Any) -> Any:
            return self.packed(x)

    return PackedModule()


def _check_program(
    original: Any,
    candidate: Any,
    config: ModelConfig,
    refuse: Callable[[str], ModelLoadError],
    subject: str,
) -> None:
    """Both on a row of zeros and 64 random rows, in batches the model accepts, all
    outputs compared. Float inputs get random values; integer and boolean inputs stay
    0, a valid id for any lookup. ``subject`` names the candidate in the message."""
    import torch

    from conveyor.engine.tensors import NUMPY_DTYPES

    rng = np.random.default_rng(0)
    rows = []
    for spec in config.inputs:
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        dtype = np.dtype(NUMPY_DTYPES[spec.datatype])
        value = np.zeros((65, *shape), dtype)
        if dtype.kind == "f":
            value[1:] = rng.standard_normal((64, *shape))
        rows.append(value)
    for start in range(0, 65, config.max_batch_size):
        args = [torch.from_numpy(r[start : start + config.max_batch_size]) for r in rows]
        outs = []
        for program in (original, candidate):
            try:
                with torch.inference_mode():
                    result = program(*args)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise refuse(f"the program failed on {len(args[0])} rows: {first}") from None
            outs.append(list(result) if isinstance(result, (tuple, list)) else [result])
        if len(outs[0]) != len(outs[1]):
            raise refuse(f"the program returns {len(outs[0])} outputs, not {len(outs[1])}")
        for want, got in zip(*outs, strict=True):
            if isinstance(got, torch.Tensor) and not isinstance(want, torch.Tensor):
                raise refuse(f"the program returns {type(want).__name__}, not a tensor")
            if isinstance(want, torch.Tensor) and want.is_floating_point():
                same = want.shape == got.shape and bool(
                    torch.isclose(got.to(want.dtype), want, rtol=_RTOL, atol=_ATOL).all()
                )
                if not same:
                    shaped = want.shape == got.shape
                    diff = (
                        (got.to(want.dtype) - want).abs().max().item() if shaped else float("nan")
                    )
                    raise refuse(
                        f"{subject} outputs differ from the program's on random rows "
                        f"(max {diff:.3g})"
                    )
            elif not (bool((want == got).all()) if isinstance(want, torch.Tensor) else want == got):
                raise refuse(f"{subject} outputs differ from the program's on random rows")


def accelerate(program: Any, config: ModelConfig, where: str) -> Accelerated | None:
    """The runner for the accelerator ``config`` asks for, or None when it asks for none."""
    if "conveyor_mlp" in config.cpu_accelerators:
        return conveyor_mlp(program, config, where)
    return None
