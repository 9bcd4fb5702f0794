"""How far the last bits of a CPU's arithmetic move each quick-sweep number: the same configurations, the same
install and the same calibration windows, computed once with each of ATen's vector kernel sets that this CPU has.

    python bench/rounding_spread.py [--methods fp16,rtn,gptq] [--targets enwiki-excerpt,ptb,piqa] [--jobs 2]

Each (configuration, kernel set) runs in a process of its own with ATEN_CPU_CAPABILITY set ("default" is ATen's
scalar code; avx2 and avx512 where the CPU has them) and --threads threads. The kernel sets differ only in the
order in which elementwise ops and reductions round, so FP16's numbers move in their 5th or 6th digit. A
method that feeds each rounding decision forward (GPTQ's error feedback, a search over candidates) can turn that
into a different quantized model. The table prints each number under each kernel set and its spread, the
largest over the smallest minus one; the last column is that spread over FP16's on the same target.
The configurations are the quick sweep's entries of each named method (sweeps/quick.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmq_core.config import RunConfig  # noqa: E402

KERNEL_LADDER = ("default", "avx2", "avx512")  # ATen's x86 kernel sets, each a superset of the one before


def kernel_sets() -> list[str]:
    own = torch.backends.cpu.get_cpu_capability().lower()
    return list(KERNEL_LADDER[:KERNEL_LADDER.index(own) + 1]) if own in KERNEL_LADDER else ["default", own]


def quick_sweep_configs(methods: list[str]) -> list[dict]:
    spec = yaml.safe_load((ROOT / "sweeps" / "quick.yaml").read_text())
    return [{**spec["defaults"], **entry} for entry in spec["configs"] if entry["method"] in methods]


def measure(entry: dict, targets: list[str]) -> dict:
    """In the child: quantize one configuration and score `targets` (no results store)."""
    from llmq_core.eval.targets import target_kind
    from llmq_core.models import load_model
    from llmq_core.quantize import quantize_model
    config = RunConfig(**entry)
    model, tokenizer = load_model(config.model, config.device)
    quantize_model(model, config, tokenizer)
    scores = {}
    for target in targets:
        metrics = target_kind(target).score(model, tokenizer, target, config, None)
        scores[target] = metrics.get("ppl", metrics.get("acc"))
    return {"kernels": torch.backends.cpu.get_cpu_capability().lower(), "scores": scores}


def run_child(entry: dict, kernels: str, targets: list[str], threads: int) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernels, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(entry), "--targets", ",".join(targets)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{entry['method']} with {kernels} kernels failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["kernels"] != kernels:
        raise RuntimeError(f"asked for {kernels} kernels, the child ran {result['kernels']}")
    return result["scores"]


def label(entry: dict) -> str:
    group = f" g{entry['group_size']}" if entry.get("group_size") else ""
    options = " " + ",".join(f"{k}={v}" for k, v in sorted(entry["options"].items())) if entry.get("options") else ""
    return f"{entry['method']} w{entry.get('wbits', 16):g}a{entry.get('abits', 16)}{group}{options}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="fp16,rtn,gptq", help="comma-separated; fp16 is the reference row")
    parser.add_argument("--targets", default="enwiki-excerpt,ptb,piqa")
    parser.add_argument("--jobs", type=int, default=1, help="processes at a time")
    parser.add_argument("--threads", type=int, default=2, help="threads per process (the quick sweep's: 2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    if args.child:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        print(json.dumps(measure(json.loads(args.child), targets)))
        return
    methods = args.methods.split(",")
    if "fp16" not in methods:
        methods.insert(0, "fp16")
    entries, kernels = quick_sweep_configs(methods), kernel_sets()
    # the slow ones first (calibrated methods, scalar kernels), so that the pool does not end on one long job
    jobs = sorted(((index, kernel) for index in range(len(entries)) for kernel in kernels),
                  key=lambda job: (entries[job[0]]["method"] in ("fp16", "rtn"), job[1] != "default"))

    def run(job: tuple[int, str]) -> dict:
        scores = run_child(entries[job[0]], job[1], targets, args.threads)
        print(json.dumps({"configuration": label(entries[job[0]]), "kernels": job[1], **scores}), flush=True)
        return scores

    with ThreadPoolExecutor(args.jobs) as pool:
        scores = dict(zip(jobs, pool.map(run, jobs)))
    by_config = {label(entry): {kernel: scores[index, kernel] for kernel in kernels}
                 for index, entry in enumerate(entries)}
    print(f"CPU {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, {args.threads} threads a process")
    print(f"| configuration | target | {' | '.join(kernels)} | spread | / FP16's |")
    print("|---|---|" + "---|" * len(kernels) + "---|---|")
    fp16 = next(iter(by_config.values()))
    for name, results in by_config.items():
        for target in targets:
            values = [results[kernel][target] for kernel in kernels]
            spread = max(values) / min(values) - 1
            reference = max(fp16[k][target] for k in kernels) / min(fp16[k][target] for k in kernels) - 1
            ratio = f"{spread / reference:.3g}x" if reference > 0 else ("same" if spread == 0 else "FP16's is 0")
            print(f"| {name} | {target} | {' | '.join(f'{v:.8g}' for v in values)} | {spread:.2e} | {ratio} |")


if __name__ == "__main__":
    main()
