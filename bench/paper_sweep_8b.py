"""What each row of the paper's sweep costs at LLaMA-3-8B's shape, read from a rehearsal (bench/paper_rehearsal.sh):
its results store and its executed notebooks -> bench/paper_sweep_8b.csv, and a table per row and target.

    python bench/paper_sweep_8b.py        # from the rehearsal's records and notebooks kept in bench/paper_sweep_8b/

Per row: `quantize_s`, the method's own time (a LoRA-FT row: preparing its NF4 base and fine-tuning, the fine-tune
timed over the rehearsal's steps and extrapolated to the paper's schedule, which the `setting` says); `evaluate_s`,
every text and task; `total_s`, the notebook's wall time from its first cell to its last (kernel start, loading the
16 GB checkpoint and the worked example included), with the same extrapolation; `peak_gib`, the most GPU memory torch
held in any step. A row whose records are not all in the store is left out and named.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmq_core.config import RunConfig  # noqa: E402
from llmq_core.methods import get_method  # noqa: E402
from llmq_core.results import ResultStore  # noqa: E402
from run_all import run_slug  # noqa: E402

REHEARSAL = ROOT / "bench" / "paper_sweep_8b.yaml"
KEPT = ROOT / "bench" / "paper_sweep_8b"  # results/: its store; notebooks/: the executed notebook of each whole row
PAPER_SWEEP = ROOT / "sweeps" / "paper-llama3-8b.yaml"
COLUMNS = ("method", "setting", "quantize_s", "evaluate_s", "total_s", "peak_gib", "commit")


def sweep_configs(path: Path) -> list[RunConfig]:
    spec = yaml.safe_load(path.read_text())
    return [RunConfig(**{**spec["defaults"], **entry}) for entry in spec["configs"]]


def without_steps(config: RunConfig) -> dict:
    """A row as the rehearsal matches it to the paper's: all of it but the fine-tune's length."""
    values = config.to_dict()
    values["options"] = {k: v for k, v in values["options"].items() if k != "steps"}
    return values


def paper_steps(config: RunConfig) -> int:
    """The fine-tuning steps of the paper sweep's row that this rehearsal row stands for."""
    for paper in sweep_configs(PAPER_SWEEP):
        if paper.options.get("steps") and without_steps(paper) == without_steps(config):
            return paper.options["steps"]
    raise ValueError(f"{run_slug(config)} is not a row of {PAPER_SWEEP.name} apart from its steps")


def setting(config: RunConfig, steps: int | None = None) -> str:
    if get_method(config.method).track == "lora_ft":
        return (f"NF{config.wbits} + LoRA r{config.options['rank']}, fine-tune timed over {config.options['steps']} "
                f"steps and extrapolated to {steps}")
    if config.method == "fp16":
        return "bf16"
    group = "" if config.group_size is None else f" g{config.group_size}"
    activations = f"A{config.abits}" if config.abits < 16 else ""
    return f"W{config.wbits:g}{activations}{group}"


def utc(stamp: str) -> datetime:
    """papermill writes naive UTC times, the store aware ones: both as naive UTC."""
    moment = datetime.fromisoformat(stamp)
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def notebook_seconds(notebook: Path) -> tuple[float, datetime]:
    """papermill's wall time of an executed notebook, and when it started."""
    meta = json.loads(notebook.read_text())["metadata"]["papermill"]
    return meta["duration"], utc(meta["start_time"])


def row(config: RunConfig, store: ResultStore, runs: Path) -> tuple[dict, dict[str, float]] | None:
    records = {target: store.get(config.record_key(target)) for target in config.targets()}
    notebook = runs / f"{run_slug(config)}.ipynb"
    if None in records.values() or not notebook.exists():
        return None
    report = next(iter(records.values()))["quantization"]
    total, started = notebook_seconds(notebook)
    # targets stored by an earlier, cut run of the notebook: their time is not in this run's wall time
    total += sum(r["wall_time_s"] for r in records.values() if utc(r["created"]) < started)
    steps = None
    if get_method(config.method).track == "lora_ft":
        steps = paper_steps(config)
        extra = report["finetune_time_s"] * (steps / config.options["steps"] - 1)
        quantize, total = report["prepare_time_s"] + report["finetune_time_s"] + extra, total + extra
        peaks = [report["finetune_peak_memory_mb"]]
    else:
        quantize, peaks = report["quantize_time_s"], [report["quantize_peak_memory_mb"]]
    peaks += [r["peak_memory_mb"] for r in records.values()]
    commits = sorted({r["git_commit"] for r in records.values()})
    evaluations = {target: r["wall_time_s"] for target, r in records.items()}
    return {"method": config.method, "setting": setting(config, steps), "quantize_s": round(quantize, 1),
            "evaluate_s": round(sum(evaluations.values()), 1), "total_s": round(total, 1),
            "peak_gib": round(max(peaks) / 1024, 1), "commit": " ".join(c[:7] for c in commits)}, evaluations


def markdown(rows: list[tuple[dict, dict[str, float]]]) -> str:
    """One line per row: the CSV's columns, then each evaluation's seconds."""
    targets = list(dict.fromkeys(t for _, evaluations in rows for t in evaluations))
    lines = ["| " + " | ".join([*COLUMNS[:-1], *targets]) + " |", "|" + "---|" * (len(COLUMNS) - 1 + len(targets))]
    for values, evaluations in rows:
        cells = [str(values[c]) for c in COLUMNS[:-1]] + [f"{evaluations[t]:.0f}" if t in evaluations else ""
                                                          for t in targets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=KEPT / "results", help="the rehearsal's results store")
    parser.add_argument("--runs", type=Path, default=KEPT / "notebooks", help="its executed notebooks")
    parser.add_argument("--csv", type=Path, default=ROOT / "bench" / "paper_sweep_8b.csv")
    args = parser.parse_args(argv)
    store, rows, missing = ResultStore(args.store), [], []
    for config in sweep_configs(REHEARSAL):
        measured = row(config, store, args.runs)
        (rows.append(measured) if measured else missing.append(run_slug(config)))
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(values for values, _ in rows)
    print(markdown(rows))
    if missing:
        print(f"\nnot yet measured in full: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
