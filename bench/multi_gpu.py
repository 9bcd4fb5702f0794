"""One sweep on one GPU and on N GPUs, in one run: the wall-time ratio, and each record stored exactly once.

    python bench/multi_gpu.py --sweep bench/multi_gpu.yaml --gpus 2 --jobs 4 [--markdown FILE]

Each run is `run_all.py --no-summary --gpus G --jobs J` into a results store of its own (a fresh folder), so
that both measure every configuration. Afterwards each store must hold one record per configuration and
target, and nothing else. The store refuses a second write of a record, so a duplicate would have failed
its run. The ratio is the wall time at 1 GPU over the wall time at N.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmq_core.config import RunConfig  # noqa: E402
from llmq_core.results import ResultStore, git_commit  # noqa: E402


def sweep_configs(sweep: Path) -> list[RunConfig]:
    spec = yaml.safe_load(sweep.read_text())
    return [RunConfig(**{**spec["defaults"], **entry}) for entry in spec["configs"]]


def timed_sweep(sweep: Path, gpus: int, jobs: int, device: str, folder: Path) -> float:
    """Wall seconds of the whole sweep into the store `folder`/results."""
    env = {**os.environ, "LLMQ_RESULTS": str(folder / "results"), "LLMQ_OUTPUT": str(folder / "out"),
           "LLMQ_ADAPTERS": str(folder / "adapters"), "LLMQ_ANSWERS": str(folder / "answers")}
    command = [sys.executable, str(ROOT / "run_all.py"), "--no-summary", "--sweep", str(sweep), "--device", device,
               "--jobs", str(jobs)] + (["--gpus", str(gpus)] if device.startswith("cuda") else [])
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def store_check(configs: list[RunConfig], store: ResultStore) -> tuple[int, int, int]:
    """(records expected, of them stored, records in the store): a sweep stored exactly once has all three equal."""
    expected = [config.record_key(target) for config in configs for target in config.targets()]
    return len(expected), sum(store.get(key) is not None for key in expected), len(store.records())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "bench" / "multi_gpu.yaml")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=4, help="configurations at once on each GPU")
    parser.add_argument("--device", default="cuda", help="cpu: the runs without --gpus (tests)")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    configs = sweep_configs(args.sweep)
    lines = [f"{len(configs)} configurations of {args.sweep.name}, --jobs {args.jobs} per GPU", "",
             "| GPUs | wall s | records expected | stored | in the store |", "|---|---|---|---|---|"]
    seconds = {}
    with tempfile.TemporaryDirectory() as scratch:
        for gpus in (1, args.gpus):
            folder = Path(scratch) / f"gpus-{gpus}"
            seconds[gpus] = timed_sweep(args.sweep, gpus, args.jobs, args.device, folder)
            counts = store_check(configs, ResultStore(folder / "results"))
            lines.append(f"| {gpus} | {seconds[gpus]:.0f} | " + " | ".join(map(str, counts)) + " |")
            print(lines[-1], flush=True)
    lines += ["", f"wall-time ratio, 1 GPU / {args.gpus} GPUs: {seconds[1] / seconds[args.gpus]:.2f}x"]
    print("\n".join(lines))
    if args.markdown:
        device = "cpu"
        if args.device.startswith("cuda"):
            import torch

            device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
        args.markdown.write_text(f"# bench/multi_gpu.py, {date.today()}, {device}, commit {git_commit()}\n\n"
                                 + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
