"""CPU inference through conveyor's modules against torch's, same weights, same run.

Times, per shape, ``nn.Sequential(nn.Linear, activation)`` (torch's own CPU op),
``fused_linear`` (the functional op, which packs nothing and lets the dispatcher
pick), and the ``FusedLinear`` module, whose CPU inference runs on its
weights packed once (``conveyor.kernels.PackedMLP``); then the serving model's
whole MLP (64 -> 256 -> 256 -> 1, sigmoid) as TorchScript against
``PackedMLP.run``, the path of the engine's ``conveyor_mlp`` accelerator; then a
torch.export program with that MLP inside (standardise, MLP, probability and
logits) as exported against the same program with its Linear chain rewritten
into one ``PackedMLP`` call (the accelerator's path for such programs).
Every output is checked against torch before it is timed; each figure is the
fastest of ``--rounds`` windows (noise on a shared machine only adds time).
Ratios > 1: conveyor faster. Usage::

    .venv/bin/python benchmarks/kernels/module_inference.py [--threads 1] [--rounds 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from conveyor.kernels import FusedLinear, PackedMLP, fused_linear

LINEAR_SHAPES = [
    (8, 64, 256, "relu"),
    (16, 64, 256, "relu"),
    (1, 256, 256, "relu"),
    (8, 256, 256, "relu"),
    (32, 256, 256, "relu"),
    (32, 256, 256, "gelu"),
    (64, 64, 256, "relu"),
    (256, 256, 256, "relu"),
    (4, 1024, 1024, "relu"),
    (512, 512, 512, "gelu"),
]
MLP_BATCHES = (1, 8, 64, 512)


def fastest_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def calls_for(work: int) -> int:
    """Enough calls for a window of a few milliseconds at any size."""
    return max(20, int(3e6 // (work / 100 + 1000)))


def linear_rows(rounds: int) -> None:
    print("| shape | torch us | fused_linear us | FusedLinear us | FusedLinear vs torch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for m, k, n, act in LINEAR_SHAPES:
        torch.manual_seed(0)
        module = FusedLinear(k, n, act)
        ref = nn.Sequential(nn.Linear(k, n), nn.ReLU() if act == "relu" else nn.GELU())
        ref[0].load_state_dict(module.state_dict())
        x = torch.randn(m, k)
        calls = calls_for(m * k * n)
        with torch.inference_mode():
            functional = partial(fused_linear, x, module.weight, module.bias, act)
            want = ref(x)
            torch.testing.assert_close(module(x), want, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(functional(), want, rtol=1e-4, atol=1e-5)
            t_ref = fastest_us(partial(ref, x), calls, rounds)
            t_fn = fastest_us(functional, calls, rounds)
            t_mod = fastest_us(partial(module, x), calls, rounds)
        cells = f"{t_ref:.1f} | {t_fn:.1f} | {t_mod:.1f} | {t_ref / t_mod:.2f}x"
        print(f"| {m}x{k}->{n} {act} | {cells} |", flush=True)


def mlp_rows(rounds: int) -> None:
    from conveyor.engine.accelerators import mlp_layers

    torch.manual_seed(0)
    hidden = [nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()]
    seq = nn.Sequential(*hidden, nn.Linear(256, 1), nn.Sigmoid()).eval()
    script = torch.jit.script(seq)
    packed = PackedMLP(mlp_layers(script))
    print()
    print("| 64-256-256-1 sigmoid, batch | TorchScript us | PackedMLP.run us | vs TorchScript |")
    print("| ---: | ---: | ---: | ---: |")
    for batch in MLP_BATCHES:
        x = torch.randn(batch, 64)
        xn, out = x.numpy(), np.empty((batch, 1), np.float32)
        calls = calls_for(batch * 64 * 256 * 5)
        with torch.inference_mode():
            np.testing.assert_allclose(packed.run(xn), script(x).numpy(), rtol=1e-5, atol=1e-6)
            t_ts = fastest_us(partial(script, x), calls, rounds)
            t_pk = fastest_us(partial(packed.run, xn, out), calls, rounds)
        print(f"| {batch} | {t_ts:.1f} | {t_pk:.1f} | {t_ts / t_pk:.2f}x |", flush=True)


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1, 1, 64))
        hidden = [nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 256), nn.ReLU()]
        self.body = nn.Sequential(*hidden, nn.Linear(256, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.body(x - self.mean)
        return torch.sigmoid(logits), logits


def export_rows(rounds: int) -> None:
    from conveyor.engine.accelerators import rewrite_chains
    from conveyor.engine.model_config import parse_config

    torch.manual_seed(0)
    module = _Classifier().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)

    def exported() -> nn.Module:
        program = torch.export.export(module, (torch.randn(2, 64),), dynamic_shapes=({0: batch},))
        return program.module()

    config = parse_config(
        {
            "name": "m",
            "platform": "torch_export",
            "max_batch_size": 512,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [64]}],
            "outputs": [
                {"name": "probability", "datatype": "FP32", "shape": [1]},
                {"name": "logits", "datatype": "FP32", "shape": [1]},
            ],
        },
        "benchmark",
    )
    plain = exported()
    rewritten = rewrite_chains(exported(), config, RuntimeError).program
    print()
    print("| torch.export program, batch | as exported us | chain rewritten us | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for size in MLP_BATCHES:
        x = torch.randn(size, 64)
        calls = calls_for(size * 64 * 256 * 5)
        with torch.inference_mode():
            for want, got in zip(plain(x), rewritten(x), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            t_plain = fastest_us(partial(plain, x), calls, rounds)
            t_new = fastest_us(partial(rewritten, x), calls, rounds)
        print(f"| {size} | {t_plain:.1f} | {t_new:.1f} | {t_plain / t_new:.2f}x |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and OpenMP threads (default 1)"
    )
    parser.add_argument(
        "--rounds", type=int, default=7, help="timing windows per figure (default 7)"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds < 1:  # 0 windows time nothing: inf and nan ratios
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    from conveyor import _C

    torch.set_num_threads(args.threads)
    _C.set_num_threads(args.threads)
    linear_rows(args.rounds)
    mlp_rows(args.rounds)
    export_rows(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
