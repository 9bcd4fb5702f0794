"""GPTQ's column loop, before and after it became one CUDA graph per block, on the same layer, in one run.

    python bench/gptq_columns.py [--device cuda] [--rows 4096] [--cols 14336]

The baseline is gptq.py as of BASELINE_COMMIT (read with `git show`, or from --baseline FILE where
the tree has no .git, as on a lent GPU). Both quantize the same random weight with the same Hessian
(from random inputs) at three settings; the table gives each one's wall time, the speed-up, and the
largest difference between the two quantized weights (0 where they agree bit for bit).

PB-LLM's and QuIP's column loops replay CUDA graphs the same way; a second table times each with the
graph and with its eager loop (`cuda_graph=False`, the code before), on the same layer and Hessian.
On a CPU there is no graph, and both columns time the eager loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmq_core.quant import METHODS  # noqa: E402
from llmq_core.quant.gptq import gptq_quantize_linear  # noqa: E402
from llmq_core.quant.pbllm import pbllm_quantize_linear  # noqa: E402
from llmq_core.quant.quip import ldlq_round  # noqa: E402
from timing import measured  # noqa: E402

BASELINE_COMMIT = "c396d89"  # the eager column loop, a dozen kernel launches per column
SETTINGS = {"per-channel": dict(group_size=None), "g128": dict(group_size=128),
            "g128 act-order static": dict(group_size=128, act_order=True, static_groups=True)}


def load_baseline(path: Path | None):
    if path is None:
        source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:llmq_core/quant/gptq.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        path = Path(tempfile.mkdtemp()) / "gptq_baseline.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location("gptq_baseline", path)
    module = importlib.util.module_from_spec(spec)
    ours = METHODS.pop("gptq")  # the baseline registers "gptq" again as it loads
    try:
        spec.loader.exec_module(module)
    finally:
        METHODS["gptq"] = ours
    return module.gptq_quantize_linear


def timed(quantize, weight: torch.Tensor, hessian: torch.Tensor, settings: dict) -> tuple[float, torch.Tensor]:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
    linear.weight.data = weight.clone()
    _, seconds, _ = measured(str(weight.device), lambda: quantize(linear, hessian.clone(), 4, **settings))
    return seconds, linear.weight.data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--baseline", type=Path, help="the baseline gptq.py, where `git show` cannot read it")
    args = parser.parse_args(argv)
    baseline = load_baseline(args.baseline)
    torch.manual_seed(0)
    weight = torch.randn(args.rows, args.cols, device=args.device) / args.cols ** 0.5
    inputs = torch.randn(4 * args.cols, args.cols, device=args.device)
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"GPTQ of one {args.rows} x {args.cols} Linear at 4 bits on {device}")
    print(f"{'setting':24s} {'before s':>9s} {'after s':>9s} {'speed-up':>9s} {'max |diff|':>11s}")
    for name, settings in SETTINGS.items():
        timed(gptq_quantize_linear, weight, hessian, settings)  # warm-up (and CUDA graph capture paths)
        before, old = timed(baseline, weight, hessian, settings)
        after, new = timed(gptq_quantize_linear, weight, hessian, settings)
        print(f"{name:24s} {before:9.3f} {after:9.3f} {before / after:8.2f}x {(old - new).abs().max().item():11.2e}")
    print(f"\n{'column loop':24s} {'eager s':>9s} {'graph s':>9s} {'speed-up':>9s} {'max |diff|':>11s}")
    for name, loop in graph_or_eager_loops(weight, hessian).items():
        loop(True)  # warm-up and capture
        old, eager, _ = measured(args.device, lambda: loop(False))
        new, graph, _ = measured(args.device, lambda: loop(True))
        print(f"{name:24s} {eager:9.3f} {graph:9.3f} {eager / graph:8.2f}x {(old - new).abs().max().item():11.2e}")


def graph_or_eager_loops(weight: torch.Tensor, hessian: torch.Tensor) -> dict[str, Callable[[bool], torch.Tensor]]:
    """PB-LLM at 1.7 bits (10 % salient, groups of 128) and QuIP's LDLQ at 2 bits, each given `cuda_graph`."""
    def pbllm(graph: bool) -> torch.Tensor:
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
        linear.weight.data = weight.clone()
        pbllm_quantize_linear(linear, hessian.clone(), 0.1, 128, cuda_graph=graph)
        return linear.weight.data

    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(hessian.shape[0], device=hessian.device)
    grid = (weight - weight.min()) / (weight.max() - weight.min()) * 3
    return {"PB-LLM 1.7 bits": pbllm, "QuIP LDLQ 2 bits": lambda graph: ldlq_round(grid, damped, 4, cuda_graph=graph)}


if __name__ == "__main__":
    main()
