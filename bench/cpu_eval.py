"""Choices behind the quick CPU sweep's speed, measured side by side in one run.

    python bench/cpu_eval.py

1. fp32 or bf16 compute on the CPU: tokens/s of the embedded model for perplexity windows
   (4 x 512) and for lm-eval-sized batches (16 x 96), and how far bf16 moves the perplexity.
2. Building lm-eval's TaskManager with only our five tasks, against indexing every task it ships.
Prints ratios against the baseline measured in the same run; absolute CPU times are only context.
"""

from __future__ import annotations

import time

import torch

from llmq_core.data import eval_tokens
from llmq_core.eval.perplexity import perplexity
from llmq_core.eval.tasks import task_config_dir
from llmq_core.models import load_model


def tokens_per_second(model: torch.nn.Module, batch: torch.Tensor, repeats: int = 3) -> float:
    with torch.inference_mode():
        model(batch[:1, :32])  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return batch.numel() / sorted(times)[len(times) // 2]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    rows = []
    shapes = {"perplexity 4x512": (4, 512), "lm-eval 16x96": (16, 96)}
    speed, ppl = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tokenizer = load_model("smollm2-135m", dtype=dtype)
        for name, shape in shapes.items():
            speed[dtype, name] = tokens_per_second(model, torch.randint(0, 49152, shape))
        ppl[dtype] = perplexity(model, eval_tokens("ptb", tokenizer), seqlen=512, max_windows=4, progress=False)
    for name in shapes:
        rows.append((f"tokens/s, {name}", speed[torch.float32, name], speed[torch.bfloat16, name]))
    rows.append(("ptb perplexity, 4x512", ppl[torch.float32], ppl[torch.bfloat16]))

    from lm_eval.tasks import TaskManager

    ours = seconds(lambda: TaskManager(include_path=str(task_config_dir()), include_defaults=False))
    everything = seconds(lambda: TaskManager(include_path=str(task_config_dir())))

    print(f"{'measure':32s} {'fp32':>10s} {'bf16':>10s} {'bf16/fp32':>10s}")
    for name, fp32, bf16 in rows:
        print(f"{name:32s} {fp32:10.2f} {bf16:10.2f} {bf16 / fp32:10.3f}")
    print(f"\n{'TaskManager':32s} {'ours only':>10s} {'all tasks':>10s} {'all/ours':>10s}")
    print(f"{'seconds to build':32s} {ours:10.3f} {everything:10.3f} {everything / ours:10.0f}")


if __name__ == "__main__":
    main()
