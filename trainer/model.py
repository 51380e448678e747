"""The tabular model family: the reference users copy, so it stays small.

``TabularModel(numeric, categorical) -> logits``:

* numeric features ``[B, F]`` (raw values) are standardised with the profiled mean and std of
  ``stats.json``, held as buffers, so the exported program normalises exactly as training did;
* each categorical id ``[B, C]`` (0 = out of vocabulary) goes through an embedding bag of
  ``embedding_dim`` values; the C features share one table, each with its own id range;
* the concatenation feeds an MLP of ``hidden`` widths: linear + activation (one fused op where
  ``conveyor.kernels`` provides it, see :func:`make_linear`), optional layer norm, dropout
  (always a layer, p = 0 too, so the parameter names do not depend on it);
* a linear head gives 1 logit (binary: class ``classes[1]``; regression: the standardised
  target) or K logits (multiclass).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from conveyor.ingest.spec import FeatureSpec

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class LinearAct(nn.Module):
    """``activation(x @ W.T + b)``: the torch reference of a fused linear + activation."""

    def __init__(self, in_features: int, out_features: int, activation: str = "none") -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = _ACTIVATIONS[activation]() if activation != "none" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


def make_linear(in_features: int, out_features: int, activation: str = "none") -> nn.Module:
    """A linear layer followed by ``activation`` (``none``, ``relu``, ``gelu``, ``silu``, ``tanh``).

    The one seam to the fused ops: ``conveyor.kernels.FusedLinear`` (the dispatcher picks C++,
    Triton or CUDA, else torch) for the activations it fuses, else :class:`LinearAct`. Both
    compute the same function within float tolerance; :func:`to_reference` turns the first
    into the second for export, since TorchScript cannot script the fused op's autograd wrapper.
    """
    try:
        from conveyor.kernels import FusedLinear
        from conveyor.kernels.linear import ACTIVATIONS
    except ImportError:
        return LinearAct(in_features, out_features, activation)
    if activation not in ACTIVATIONS:
        return LinearAct(in_features, out_features, activation)
    return FusedLinear(in_features, out_features, activation=activation)


def to_reference(model: nn.Module) -> nn.Module:
    """Replace every fused linear in ``model`` (in place) by a :class:`LinearAct` with the same
    weights, so the model is plain torch (scriptable, loadable without conveyor)."""
    try:
        from conveyor.kernels import FusedLinear
    except ImportError:
        return model
    for name, child in list(model.named_children()):
        if isinstance(child, FusedLinear):
            plain = LinearAct(child.in_features, child.out_features, child.activation)
            with torch.no_grad():
                plain.linear.weight.copy_(child.weight)
                plain.linear.bias.copy_(child.bias)
            setattr(model, name, plain)
        else:
            to_reference(child)
    return model


class TabularModel(nn.Module):
    """Normalisation + embedding bags + MLP + head (see the module docstring).

    Args:
        mean, std: per numeric feature (std <= 0 is treated as 1: a constant feature).
        vocab_sizes: vocabulary length per categorical feature (ids 0..len, 0 = OOV).
        out_dim: 1 (binary, regression) or K (multiclass).
        hidden: MLP widths (default 256, 128); activation: see :func:`make_linear`.
        dropout: probability after each hidden layer (default 0.1).
        layer_norm: a LayerNorm after each hidden layer's activation (default off).
        embedding_dim: values per categorical feature (default 8).
        label_mean, label_std: regression target standardisation (identity for classification).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        vocab_sizes: Sequence[int],
        out_dim: int,
        hidden: Sequence[int] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.1,
        layer_norm: bool = False,
        embedding_dim: int = 8,
        label_mean: float = 0.0,
        label_std: float = 1.0,
    ) -> None:
        super().__init__()
        std_t = torch.tensor(list(std), dtype=torch.float32)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("inv_std", 1.0 / torch.where(std_t > 0, std_t, torch.ones_like(std_t)))
        self.n_numeric = len(mean)
        self.n_categorical = len(vocab_sizes)
        self.embedding_dim = embedding_dim
        sizes = [n + 1 for n in vocab_sizes]  # + the OOV id 0
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.register_buffer("id_offset", torch.tensor(starts, dtype=torch.long))
        self.embeddings = nn.EmbeddingBag(max(1, sum(sizes)), embedding_dim, mode="sum")
        if self.n_categorical == 0:
            # A one-row placeholder (checkpoints keep their keys) that forward never uses:
            # DDP would wait for its gradient and fail the second step ("Expected to have
            # finished reduction in the prior iteration").
            self.embeddings.weight.requires_grad_(False)
        layers: list[nn.Module] = []
        width = self.n_numeric + self.n_categorical * embedding_dim
        for h in hidden:
            layers.append(make_linear(width, h, activation))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            # Always present, p = 0 included (then an identity): the parameter names
            # (``mlp.N.*``) must not depend on the dropout, or a run resumed with another
            # --dropout could not load its own checkpoint.
            layers.append(nn.Dropout(dropout))
            width = h
        self.mlp = nn.Sequential(*layers)
        self.head = make_linear(width, out_dim, "none")
        self.label_mean = float(label_mean)
        self.label_std = float(label_std)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """``numeric`` float32 ``[B, F]`` raw values, ``categorical`` int64 ``[B, C]`` ids ->
        logits float32 ``[B, out_dim]``."""
        parts = [(numeric - self.mean) * self.inv_std]
        if self.n_categorical > 0:
            ids = (categorical + self.id_offset).reshape(-1, 1)  # one bag per (row, feature)
            emb = self.embeddings(ids)
            parts.append(emb.reshape(categorical.shape[0], self.n_categorical * self.embedding_dim))
        return self.head(self.mlp(torch.cat(parts, dim=1)))


# Version of the MLP's layer numbering, recorded in checkpoints. 1 (unrecorded): a run with
# dropout 0 had no Dropout layers, so its ``mlp.N`` indices were packed tighter; 2: every hidden
# layer has one (see TabularModel).
MLP_LAYOUT = 2


def upgrade_mlp_keys(
    state: dict[str, Any], n_hidden: int, layer_norm: bool, prefix: str = "mlp."
) -> dict[str, Any]:
    """``state`` (a TabularModel state dict of layout 1 made with dropout 0) with its
    ``mlp.N`` keys renumbered to the current layout; other keys are kept as they are."""
    old_step = 2 if layer_norm else 1  # linear (+ norm) per hidden layer
    new_step = old_step + 1  # + dropout
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix) :].partition(".")
            if index.isdigit() and int(index) < n_hidden * old_step:
                layer, offset = divmod(int(index), old_step)
                key = f"{prefix}{layer * new_step + offset}.{rest}"
        out[key] = value
    return out


def output_dim(spec: FeatureSpec) -> int:
    if spec.label.task == "multiclass":
        return len(spec.label.classes or [])
    return 1


def build_model(spec: FeatureSpec, stats: dict[str, Any], **options: Any) -> TabularModel:
    """A :class:`TabularModel` for ``spec`` with normalisation from ``stats`` (a stats.json dict);
    ``options`` are TabularModel's keyword arguments (hidden, activation, ...)."""
    num = stats["numeric"]
    mean = [float(num[n]["mean"]) for n in spec.numeric_names]
    std = [float(num[n]["std"]) for n in spec.numeric_names]
    label_mean, label_std = 0.0, 1.0
    if spec.label.task == "regression":
        label_mean = float(stats["label"]["mean"])
        label_std = float(stats["label"]["std"]) or 1.0
    return TabularModel(
        mean,
        std,
        [len(f.vocab) for f in spec.categorical],
        output_dim(spec),
        label_mean=label_mean,
        label_std=label_std,
        **options,
    )
