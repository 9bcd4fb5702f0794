"""What the paper's tables cost in GPU-hours on one H200, from the rehearsal's measured rows (bench/paper_sweep_8b.csv).

    python bench/paper_cost.py

Each row of sweeps/paper-llama3-8b.yaml costs the `total_s` of the measured row of its method: measured where it is
that row, extrapolated for the method's other settings (a method's time hardly depends on its bits: the same walk,
the same evaluation). LLaMA-3-70B's rows (sweeps/paper-llama3-70b.yaml) are extrapolated from the same method's 8B
row by the ratio of the two models' parameters (every step here is matrix products over the weights). The NF4 row
(QLoRA with no steps) costs the QLoRA row less its fine-tune and base preparation, `total_s - quantize_s`: a slight
underestimate, by the seconds that loading the NF4 base takes. So

    GPU-hours(table) = sum over its rows r of total_s(method of r) x (params(model) / params(8B)) / 3600.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from paper_checkpoint import PUBLISHED_CONFIGS  # noqa: E402
from paper_sweep_8b import REHEARSAL, sweep_configs, without_steps  # noqa: E402

from run_all import run_slug  # noqa: E402

MEASURED = ROOT / "bench" / "paper_sweep_8b.csv"
TABLES = {"llama3-8b": ROOT / "sweeps" / "paper-llama3-8b.yaml", "llama3-70b": ROOT / "sweeps" / "paper-llama3-70b.yaml"}


def parameters(shape: str) -> int:
    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**PUBLISHED_CONFIGS[shape])).num_parameters()


def row_seconds(method: str, steps: int | None, measured: dict[str, dict[str, float]]) -> float:
    if method not in measured:
        return float("nan")
    row = measured[method]
    return row["total_s"] - row["quantize_s"] if steps == 0 else row["total_s"]


def table_cost(model: str, measured: dict[str, dict[str, float]], rehearsed: list[dict]) -> list[dict]:
    """Each row's seconds; `rehearsed` are the measured rehearsal rows (`without_steps`: its fine-tunes are
    shorter than the schedule they stand for)."""
    scale = parameters(model) / parameters("llama3-8b")
    rows = []
    for config in sweep_configs(TABLES[model]):
        slug = run_slug(config)
        seconds = row_seconds(config.method, config.options.get("steps"), measured) * scale
        rows.append({"row": slug, "method": config.method, "seconds": seconds,
                     "measured": model == "llama3-8b" and without_steps(config) in rehearsed})
    return rows


def main() -> int:
    with open(MEASURED) as handle:
        seconds = {row["method"]: {k: float(row[k]) for k in ("total_s", "quantize_s")} for row in csv.DictReader(handle)}
    rehearsed = [without_steps(config) for config in sweep_configs(REHEARSAL) if config.method in seconds]
    print(__doc__.split("\n\n")[-1].strip(), "\n")
    print("| table | rows | measured | extrapolated | no measured row of the method | GPU-hours on one H200 |")
    print("|---|---|---|---|---|---|")
    for model in TABLES:
        rows = table_cost(model, seconds, rehearsed)
        known = [r for r in rows if r["seconds"] == r["seconds"]]
        unknown = sorted({r["method"] for r in rows} - {r["method"] for r in known})
        hours = sum(r["seconds"] for r in known) / 3600
        print(f"| {model} | {len(rows)} | {sum(r['measured'] for r in rows)} | "
              f"{len(known) - sum(r['measured'] for r in rows)} | {', '.join(unknown) or 'none'} | "
              f"{hours:.1f}{' (a lower bound)' if unknown else ''} |")
    print(f"\nparameters: 8B {parameters('llama3-8b') / 1e9:.2f}B, 70B {parameters('llama3-70b') / 1e9:.2f}B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
