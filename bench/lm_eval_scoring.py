"""lm-eval's own HFLM against our ContinuationHFLM, on the same requests, in one run.

    python bench/lm_eval_scoring.py [--device cuda] [--limit 100] [--mmlu-limit 2] [--batch-size 32]

HellaSwag (the first `--limit` documents: four continuations of about 20 tokens each) and 5-shot
MMLU (the first `--mmlu-limit` questions of each of the 57 subjects: prompts of 400-2000 tokens,
the four answer letters sharing one forward pass), each through lm-eval's simple_evaluate with
either model class. Prints wall time, peak GPU memory and accuracy of each, and ours/theirs;
the accuracies must agree (up to bf16 rounding on a GPU). Absolute times count only from a GPU.
"""

from __future__ import annotations

import argparse
import math

import torch
from lm_eval.models.huggingface import HFLM
from timing import measured

from llmq_core.eval.lm import ContinuationHFLM
from llmq_core.eval.tasks import GROUP
from llmq_core.eval.zeroshot import run_lm_eval
from llmq_core.models import load_model


def measure(model, tokenizer, lm_class: type, task: str, limit: int, batch_size: int, device: str) -> dict:
    output, seconds, peak_gib = measured(device, lambda: run_lm_eval(model, tokenizer, [task], limit, batch_size,
                                                                      lm_class=lm_class))
    return {"seconds": seconds, "peak_mb": "-" if math.isnan(peak_gib) else f"{peak_gib * 1024:.0f}",
            "acc": output["results"][task]["acc,none"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=100, help="HellaSwag documents")
    parser.add_argument("--mmlu-limit", type=int, default=2, help="MMLU questions per subject")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, args.device)
    rows = []
    for task, limit in (("llmq_hellaswag", args.limit), (GROUP, args.mmlu_limit)):
        theirs, ours = (measure(model, tokenizer, lm_class, task, limit, args.batch_size, args.device)
                        for lm_class in (HFLM, ContinuationHFLM))
        rows.append((task, limit, theirs, ours))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.model} on {device}, batch {args.batch_size}")
    print(f"{'task':16s} {'limit':>5s} {'HFLM s':>8s} {'ours s':>8s} {'speed-up':>8s} "
          f"{'HFLM MB':>8s} {'ours MB':>8s} {'HFLM acc':>8s} {'ours acc':>8s}")
    for task, limit, theirs, ours in rows:
        print(f"{task:16s} {limit:5d} {theirs['seconds']:8.1f} {ours['seconds']:8.1f} "
              f"{theirs['seconds'] / ours['seconds']:7.2f}x {theirs['peak_mb']:>8s} {ours['peak_mb']:>8s} "
              f"{theirs['acc']:8.4f} {ours['acc']:8.4f}")


if __name__ == "__main__":
    main()
