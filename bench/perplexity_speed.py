"""Perplexity throughput at LLaMA-3-8B's shape: eager against compiled blocks, and windows per batch.

    python bench/perplexity_speed.py --device cuda                 # the 8B shape, bf16, 32 blocks (a GPU)
    python bench/perplexity_speed.py --shape tiny --windows 4      # a CPU check that it runs

Each setting scores the same random tokens (seqlen 2048) on a freshly built model with the same random
weights, after one warm-up batch (which, compiled, includes the compilation; its time is printed). Printed:
tokens/s, the share of the GPU's dense bf16 peak (2 FLOP per weight of the blocks and the head, per token),
the speed-up over eager batch 1 measured in the same run, and the perplexity. Random weights give a
perplexity near the vocabulary size whatever the arithmetic, so the same settings are then compared on the
embedded SmolLM2-135M over real text (enwiki-excerpt, the WikiText2 stand-in), where a change would show,
and against the same model in float32, to show which rounding is nearer the exact value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paper_scale import SHAPES, build_model, share_of_peak  # noqa: E402
from timing import measured  # noqa: E402

from llmq_core.data import eval_tokens  # noqa: E402
from llmq_core.eval.perplexity import perplexity  # noqa: E402
from llmq_core.models import load_model  # noqa: E402


def scored(model: torch.nn.Module, tokens: torch.Tensor, batch: int, compiled: bool, device: str
           ) -> tuple[float, float, float]:
    """(warm-up s, timed s, perplexity) of one setting."""
    def score(text: torch.Tensor) -> float:
        return perplexity(model, text, 2048, batch_size=batch, compile_blocks=compiled, progress=False)
    _, warm_up, _ = measured(device, lambda: score(tokens[:, :2048 * batch]))
    ppl, seconds, _ = measured(device, lambda: score(tokens))
    torch._dynamo.reset()  # the next setting compiles afresh, for its own batch shape
    return warm_up, seconds, ppl


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=SHAPES, default="llama3-8b")
    parser.add_argument("--layers", type=int, help="decoder blocks (default: the shape's)")
    parser.add_argument("--windows", type=int, default=32, help="windows of 2048 tokens timed per setting")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--real-windows", dest="real_windows", type=int, default=40,
                        help="windows of the embedded model's real-text check")
    parser.add_argument("--peak-tflops", dest="peak_tflops", type=float, default=790.0)
    args = parser.parse_args(argv)
    settings = [(batch, compiled) for compiled in (False, True) for batch in args.batches]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.shape} shape, random weights, on {device_name}: {args.windows} windows of 2048 per setting\n")
    print("| blocks | windows per batch | warm-up s | tokens/s | share of peak | vs eager batch 1 | perplexity |")
    print("|---|---|---|---|---|---|---|", flush=True)
    tokens = torch.randint(0, SHAPES[args.shape]["vocab_size"], (1, args.windows * 2048))
    baseline = None
    for batch, compiled in settings:
        model = build_model(args.shape, args.layers, args.device)
        warm_up, seconds, ppl = scored(model, tokens, batch, compiled, args.device)
        rate = tokens.numel() / seconds
        share = share_of_peak(model, rate, args.peak_tflops)
        del model
        baseline = baseline or rate
        print(f"| {'compiled' if compiled else 'eager'} | {batch} | {warm_up:.1f} | {rate:,.0f} | "
              f"{share:.1%} | {rate / baseline:.3f}x | {ppl:.2f} |", flush=True)

    model, tokenizer = load_model("smollm2-135m", args.device)
    text = eval_tokens("enwiki-excerpt", tokenizer)
    windows = min(args.real_windows, text.shape[1] // 2048)
    print(f"\nThe embedded SmolLM2-135M ({model.dtype}), enwiki-excerpt, {windows} windows of 2048\n")
    print("| blocks | windows per batch | perplexity | relative to eager batch 1 |")
    print("|---|---|---|---|", flush=True)
    reference = None
    for batch, compiled in settings:
        model, _ = load_model("smollm2-135m", args.device)
        _, _, ppl = scored(model, text[:, :windows * 2048], batch, compiled, args.device)
        reference = reference or ppl
        print(f"| {'compiled' if compiled else 'eager'} | {batch} | {ppl:.4f} | {ppl / reference - 1:+.2e} |",
              flush=True)
    model, _ = load_model("smollm2-135m", args.device, dtype=torch.float32)  # which rounding is nearer exact
    ppl = scored(model, text[:, :windows * 2048], 1, False, args.device)[2]
    print(f"| eager, float32 weights and activations | 1 | {ppl:.4f} | {ppl / reference - 1:+.2e} |")


if __name__ == "__main__":
    main()
