"""Run the study: execute each configuration's notebook with papermill, then the summary.

    python run_all.py                         # the quick sweep (sweeps/quick.yaml): CPU, minutes
    python run_all.py --device cuda           # the full sweep (sweeps/full.yaml) on a GPU: bf16, seqlen 2048, no limits
    python run_all.py --method rtn --wbits 3 --group-size 128 --limit 100   # one config, quick defaults
    python run_all.py --sweep sweeps/full.yaml --method rtn --wbits 4 --group-size 128   # one config, full size
    python run_all.py --list                  # methods and the bits they support
    python run_all.py --dry-run               # print the plan, run nothing
    python run_all.py --device cuda --gpus 2 --jobs 4   # one worker set per GPU: 4 notebooks on each of 2 GPUs
    python run_all.py --device cuda --shard 0/8 # the first of 8 parts (a cluster array job); then --summary-only

Executed notebooks go to runs/<sweep>/. Numbers go to the results store (results/), which
is reused: a configuration already measured is not recomputed unless --force is given, so an
interrupted sweep resumes where it stopped. Each notebook runs in a papermill process of its own,
so that concurrent notebooks each have their own working folder and, with --gpus, their own GPU.
The summary notebook then rebuilds figures/ and paper/tables/ from every record in the store.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import fields
from pathlib import Path

import yaml

from llmq_core.errors import LlmqError
from llmq_core.config import RunConfig
from llmq_core.methods import METHODS, get_method
from llmq_core.results import ResultStore

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
SUMMARY = NOTEBOOKS / "summary.ipynb"
DEFAULT_SWEEP = ROOT / "sweeps" / "quick.yaml"
GPU_SWEEP = ROOT / "sweeps" / "full.yaml"  # the default with --device cuda: the quick sweep's limits are for CPUs
CONFIG_FIELDS = {field.name for field in fields(RunConfig)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--list", action="store_true", help="list the methods and the bits they support")
    parser.add_argument("--sweep", type=Path, default=None, help=f"sweep YAML (default {DEFAULT_SWEEP.relative_to(ROOT)})")
    parser.add_argument("--method", help="run one configuration of this method instead of a sweep")
    parser.add_argument("--wbits", type=float)
    parser.add_argument("--abits", type=int)
    parser.add_argument("--group-size", dest="group_size", help="a positive integer, or 'channel'")
    parser.add_argument("--model", help="smollm2-135m (offline), llama3-8b, llama3-70b, a hub id or a folder")
    parser.add_argument("--data", choices=("offline", "hub"), help="perplexity texts from the asset cache or the hub")
    parser.add_argument("--datasets", nargs="+", help="perplexity texts")
    parser.add_argument("--tasks", nargs="*", help="zero-shot tasks (none: perplexity only)")
    parser.add_argument("--limit", type=int, help="first N documents of each zero-shot task")
    parser.add_argument("--mmlu-limit", dest="mmlu_limit", type=int, help="first N questions of each MMLU subject")
    parser.add_argument("--ppl-windows", dest="ppl_windows", type=int, help="first N windows of each perplexity text")
    parser.add_argument("--seqlen", type=int)
    parser.add_argument("--device", help="cpu or cuda (cuda alone runs sweeps/full.yaml unless --sweep is given)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="lm-eval batch size")
    parser.add_argument("--calibration", help="calibration text of the methods that need one")
    parser.add_argument("--nsamples", type=int, help="calibration windows (the paper: 128)")
    parser.add_argument("--calib-seqlen", dest="calib_seqlen", type=int, help="tokens per calibration window")
    parser.add_argument("--jobs", type=int, default=1, help="configurations run at once (default 1), on each GPU "
                        "with --gpus. On a GPU a small model leaves it idle while lm-eval's Python runs: 4-8 jobs "
                        "share it well")
    parser.add_argument("--gpus", type=int, default=0, help="spread the configurations over this many GPUs "
                        "(of those CUDA_VISIBLE_DEVICES lists), --jobs notebooks on each; they share one results store")
    parser.add_argument("--shard", type=parse_shard, help="i/N: run only the i-th of N parts of the sweep (0 <= i < N; "
                        "a configuration is in part k when its place in the sweep is k modulo N), for a cluster's "
                        "array job on a shared results store; skips the summary (then run --summary-only)")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild figures/ and paper/tables/ "
                        "from the results store")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--force", action="store_true", help="recompute and replace existing results")
    parser.add_argument("--no-summary", action="store_true", help="skip the summary notebook (figures and tables)")
    return parser.parse_args(argv)


def parse_shard(value: str) -> tuple[int, int]:
    """"3/8" -> (3, 8): the fourth of eight parts."""
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"--shard takes i/N with 0 <= i < N (e.g. 0/4), not {value!r}")
    return int(index), int(count)


def shard(configs: list[RunConfig], index: int, count: int) -> list[RunConfig]:
    """Part `index` of `count`: every count-th configuration from the index-th, so that each part gets some of
    the sweep's heavy first entries, and the parts together are the sweep, each configuration in one."""
    return configs[index::count]


def gpu_ids(count: int) -> list[str]:
    """The first `count` GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or numbers them)."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [gpu.strip() for gpu in visible.split(",") if gpu.strip()] if visible is not None else \
        [str(i) for i in range(torch.cuda.device_count())]
    if count > len(ids):
        raise LlmqError(f"--gpus {count} asked for, but {len(ids)} GPU(s) can be used here; use --gpus {len(ids)} "
                        "or fewer" if ids else f"--gpus {count} asked for, but torch sees no CUDA GPU")
    return ids[:count]


def plan(args: argparse.Namespace) -> tuple[str, list[RunConfig]]:
    """The configurations to run: a sweep, with command-line flags overriding its values."""
    # a flag named like a RunConfig field sets that field, in every configuration of the sweep
    overrides = {name: value for name, value in vars(args).items() if name in CONFIG_FIELDS and value is not None}
    if "data" in overrides and "datasets" not in overrides:
        overrides["datasets"] = None  # the new data source's own three texts
    sweep = args.sweep or (GPU_SWEEP if (args.device or "").startswith("cuda") else DEFAULT_SWEEP)
    if not sweep.exists():
        raise LlmqError(f"sweep file {sweep} not found; the sweeps are in {ROOT / 'sweeps'}")
    if args.method:  # one configuration, on the sweep's defaults
        method = get_method(args.method)
        if args.wbits is None and 16 not in method.wbits:
            raise LlmqError(f"--wbits is needed for {method.name}: one of {', '.join(f'{b:g}' for b in method.wbits)}")
        defaults = yaml.safe_load(sweep.read_text())["defaults"]
        return "single", [RunConfig(**{**defaults, **overrides})]
    spec = yaml.safe_load(sweep.read_text())
    return sweep.stem, [RunConfig(**{**spec["defaults"], **entry, **overrides}) for entry in spec["configs"]]


def run_slug(config: RunConfig) -> str:
    group = "channel" if config.group_size is None else f"g{config.group_size}"
    options = "".join(f"-{k}" if v is True else f"-{k}={v}" for k, v in sorted(config.options.items()))
    seed = f"-seed{config.seed}" if config.seed else ""  # replicates of one setting must not share a notebook
    return f"{config.model.replace('/', '_')}--{config.method}-w{config.wbits:g}a{config.abits}-{group}{options}{seed}"


KERNEL_START_ATTEMPTS = 3


def execute(notebook: Path, output: Path, parameters: dict, gpu: str | None = None) -> None:
    """Run `notebook` with `parameters` into `output` in a papermill process of its own: its kernel starts in the
    notebook's folder and, with `gpu`, sees only that GPU. Raises RuntimeError with papermill's last error line."""
    env = dict(os.environ)
    # Progress bars in a saved notebook are lines of text: update them at most every 10 s (tqdm reads TQDM_*).
    env.setdefault("TQDM_MININTERVAL", "10")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        yaml.safe_dump(parameters, values)
        values.flush()
        for attempt in range(KERNEL_START_ATTEMPTS):
            done = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(output), "-f", values.name,
                                   "--cwd", str(notebook.parent), "-k", "python3", "--no-progress-bar"],
                                  env=env, capture_output=True, text=True)
            # eight kernels started at once on the two-GPU machine: two died before running a cell; start again
            died_on_start = done.returncode != 0 and "Kernel died before replying to kernel_info" in done.stderr
            if not died_on_start or attempt == KERNEL_START_ATTEMPTS - 1:
                break
            print(f"{output.stem}: its kernel died before the first cell; starting it again", file=sys.stderr)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"papermill exited with {done.returncode}")


def notebook_parameters(config: RunConfig, notebook: Path, force: bool) -> dict:
    """What the notebook's `parameters` cell receives: this configuration's value of every parameter the cell
    declares (papermill reads their names), so that its `RunConfig.from_params` rebuilds this same configuration."""
    import papermill

    values = config.to_dict()
    return {**{name: values[name] for name in papermill.inspect_notebook(str(notebook)) if name in values},
            "force": force}


def run_configs(configs: list[RunConfig], runs: Path, force: bool, jobs: int = 1,
                gpus: list[str] | None = None) -> list[str]:
    """Execute each configuration's notebook, `jobs` at a time (on each of `gpus`); the slugs of those that failed.

    Workers take the next configuration in sweep order as they free up, so each runs exactly once. A failing
    configuration is reported and the others go on. Jobs write different records, and the store writes each
    record atomically, so concurrent notebooks cannot clash.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    workers = [gpu for gpu in gpus for _ in range(jobs)] if gpus else [None] * jobs
    if len(workers) > 1:  # the kernels share the cores instead of each taking all of them
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(workers))))
    todo: queue.SimpleQueue[RunConfig] = queue.SimpleQueue()
    for config in configs:
        todo.put(config)
    failed, lock = [], threading.Lock()
    bar = tqdm(total=len(configs), desc=f"sweep {runs.name}", unit="config")

    def work(gpu: str | None) -> None:
        while True:
            try:
                config = todo.get_nowait()
            except queue.Empty:
                return
            try:
                notebook = NOTEBOOKS / get_method(config.method).notebook
                execute(notebook, runs / f"{run_slug(config)}.ipynb", notebook_parameters(config, notebook, force),
                        gpu)
                error = None
            except Exception as exception:
                error = str(exception).strip().splitlines()[-1] if str(exception).strip() else repr(exception)
            with lock:
                if error is not None:
                    failed.append(run_slug(config))
                    tqdm.write(f"FAILED {run_slug(config)}: {error}", file=sys.stderr)
                bar.update()

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        list(pool.map(work, workers))
    bar.close()
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            for method in METHODS.values():
                bits = ", ".join(f"{b:g}" for b in method.wbits)
                print(f"{method.name:12s} wbits {bits:24s} abits {','.join(map(str, method.abits)):8s} {method.summary}")
                if method.option_defaults():
                    print(f"{'':12s} options: {', '.join(f'{k}={v!r}' for k, v in method.option_defaults().items())}")
            return 0
        if args.summary_only:
            return build_summary(ROOT / "runs")
        if args.jobs < 1 or args.gpus < 0:
            raise LlmqError(f"--jobs must be at least 1 and --gpus at least 0, not {args.jobs} and {args.gpus}")
        gpus = gpu_ids(args.gpus) if args.gpus else None
        sweep, configs = plan(args)
        if args.shard:
            configs = shard(configs, *args.shard)
            sweep = f"{sweep}-shard{args.shard[0]}of{args.shard[1]}"
        for config in configs:
            config.validate()
            if not (NOTEBOOKS / get_method(config.method).notebook).exists():
                raise LlmqError(f"{config.method} has no notebook yet ({get_method(config.method).notebook}); "
                                "a sweep runs a method through its notebook")
    except LlmqError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = ROOT / "runs" / sweep
    store = ResultStore()
    # a configuration whose every number is stored is not run again: its notebook would only load and quantize
    stored = [] if args.force else [config for config in configs if not config.pending(store)]
    print(f"sweep {sweep}: {len(configs)} configurations -> {runs.relative_to(ROOT)}/"
          + (f" ({len(stored)} already stored in {store.root}, not run again; --force runs them)" if stored else ""))
    for config in configs:
        print(f"  {run_slug(config):48s} {'stored' if config in stored else get_method(config.method).notebook}")
    configs = [config for config in configs if config not in stored]
    if args.dry_run:
        return 0
    failed = run_configs(configs, runs, args.force, args.jobs, gpus)
    if args.shard:
        print("a shard leaves the summary to one run after all of them: python run_all.py --summary-only")
    elif not args.no_summary and build_summary(runs):
        failed.append("summary")
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)} (executed notebooks with the error are in {runs})",
              file=sys.stderr)
        return 1
    return 0


def build_summary(runs: Path) -> int:
    """Execute the summary notebook (figures/ and paper/tables/ from the results store); 1 if it failed."""
    try:
        execute(SUMMARY, runs / "summary.ipynb", {})
    except Exception as error:
        print(f"FAILED summary: {error}", file=sys.stderr)
        return 1
    print("figures/ and paper/tables/ rebuilt from the results store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
