"""The column loops of GPTQ, PB-LLM and QuIP, eager and as one CUDA graph per block, on the same layer, in one run.

    python bench/gptq_columns.py [--device cuda] [--rows 4096] [--cols 14336]

Each loop quantizes the same random weight with the same Hessian (from random inputs), once with its eager loop
(`cuda_graph=False`, a dozen kernel launches per column) and once replaying a CUDA graph per block
(`llmq_core/quant/column_loop.py`): GPTQ at three settings, PB-LLM at 1.7 bits and QuIP's LDLQ at 2 bits. The
table gives each one's wall time, the speed-up, and the largest difference between the two quantized weights
(0 where they agree bit for bit). On a CPU there is no graph, and both columns time the eager loop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import measured  # noqa: E402

from llmq_core.quant.gptq import gptq_quantize_linear  # noqa: E402
from llmq_core.quant.pbllm import pbllm_quantize_linear  # noqa: E402
from llmq_core.quant.quip import ldlq_round  # noqa: E402

GPTQ_SETTINGS = {"per-channel": dict(group_size=None), "g128": dict(group_size=128),
                 "g128 act-order static": dict(group_size=128, act_order=True, static_groups=True)}


def graph_or_eager_loops(weight: torch.Tensor, hessian: torch.Tensor) -> dict[str, Callable[[bool], torch.Tensor]]:
    """Each loop as a function of `cuda_graph`, returning the quantized weight: GPTQ at 4 bits with each of
    GPTQ_SETTINGS, PB-LLM at 1.7 bits (10 % salient, groups of 128), QuIP's LDLQ at 2 bits."""
    def quantized_linear(quantize: Callable[[torch.nn.Linear], object]) -> torch.Tensor:
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
        linear.weight.data = weight.clone()
        quantize(linear)
        return linear.weight.data

    def gptq(settings: dict) -> Callable[[bool], torch.Tensor]:
        return lambda graph: quantized_linear(
            lambda linear: gptq_quantize_linear(linear, hessian.clone(), 4, **settings, cuda_graph=graph))

    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(hessian.shape[0], device=hessian.device)
    grid = (weight - weight.min()) / (weight.max() - weight.min()) * 3
    return {**{f"GPTQ {name}": gptq(settings) for name, settings in GPTQ_SETTINGS.items()},
            "PB-LLM 1.7 bits": lambda graph: quantized_linear(
                lambda linear: pbllm_quantize_linear(linear, hessian.clone(), 0.1, 128, cuda_graph=graph)),
            "QuIP LDLQ 2 bits": lambda graph: ldlq_round(grid, damped, 4, cuda_graph=graph)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    weight = torch.randn(args.rows, args.cols, device=args.device) / args.cols ** 0.5
    inputs = torch.randn(4 * args.cols, args.cols, device=args.device)
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"column loops on one {args.rows} x {args.cols} Linear on {device}")
    print(f"{'column loop':28s} {'eager s':>9s} {'graph s':>9s} {'speed-up':>9s} {'max |diff|':>11s}")
    for name, loop in graph_or_eager_loops(weight, hessian).items():
        loop(True)  # warm-up and capture
        old, eager, _ = measured(args.device, lambda: loop(False))
        new, graph, _ = measured(args.device, lambda: loop(True))
        print(f"{name:28s} {eager:9.3f} {graph:9.3f} {eager / graph:8.2f}x {(old - new).abs().max().item():11.2e}")


if __name__ == "__main__":
    main()
