"""The study's tables, built from the results store: one row per quantized model, one column per metric.

Columns follow the paper's table (`paper/reference/paper_ptq.csv`), except that the
perplexity columns are named by the text really measured (enwiki-excerpt, brown, ptb
offline; wikitext2, c4, ptb from the hub). Where the model is one of the paper's, the
paper's number stands beside ours in a `paper_<column>` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from llmq_core.data import HUB_TEXTS, OFFLINE_TEXTS, PAPER_COLUMN
from llmq_core.eval.tasks import CATEGORIES, TASKS
from llmq_core.methods import METHODS, get_method
from llmq_core.models import PAPER_NAMES

CONFIG_COLUMNS = ["model", "method", "wbits", "abits", "group_size"]
PAPER_PTQ = Path(__file__).resolve().parent.parent / "paper" / "reference" / "paper_ptq.csv"
PAPER_LORA_FT = PAPER_PTQ.with_name("paper_lora_ft.csv")
# the paper's LoRA-FT columns: MMLU by category (our metric names -> theirs), then the five tasks
MMLU_COLUMNS = {**{category: f"mmlu_{category.removesuffix('_sciences')}" for category in CATEGORIES}, "acc": "mmlu_avg"}


def _config_of(key: dict[str, Any]) -> tuple:
    """What was quantized and how: the row of a table. How it was evaluated (limit, seqlen, dtype) is not."""
    return (key["model"], key["method"], key["wbits"], key["abits"], key["group_size"], key["symmetric"],
            str(sorted(key["options"].items())), key["seed"])


def _coverage(key: dict[str, Any]) -> tuple[float, int]:
    """How much of the set a record scored: a full evaluation beats any limited one, then longer windows win."""
    return (float("inf") if key["limit"] is None else key["limit"], key["seqlen"] or 0)


def by_device(records: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """The records grouped by (device, dtype): a CPU quick sweep and a GPU full sweep are never mixed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["device"], record["key"]["dtype"]), []).append(record)
    return groups


def of_seed(records: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The records of one seed. The tables show the sweeps' default seed, 0; a configuration run again at other
    seeds is a replicate for an experiment (llmq_core.findings), not a row of its own."""
    return [record for record in records if record["key"]["seed"] == seed]


def best_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each configuration and target keep one record: the most complete evaluation (e.g. the
    GPU's full sets at seqlen 2048 over the quick CPU sweep's first 50 documents)."""
    best: dict[tuple, dict[str, Any]] = {}
    for record in records:
        key = record["key"]
        slot = (_config_of(key), key["data"], key["target"])
        if slot not in best or _coverage(key) > _coverage(best[slot]["key"]):
            best[slot] = record
    return list(best.values())


def _eval_size(keys: list[dict[str, Any]], kind: str) -> str:
    sizes = set()
    for key in keys:
        if key["kind"] == kind:
            limit = "full" if key["limit"] is None else (f"limit={key['limit']}" if kind == "zeroshot"
                                                          else f"{key['limit']} windows")
            sizes.add(limit + (f" x {key['seqlen']}" if kind == "perplexity" else ""))
    return "; ".join(sorted(sizes))


def options_label(options: dict[str, Any]) -> str:
    """'act_order=True, static_groups=True'; '' for a method's defaults."""
    return ", ".join(f"{name}={value}" for name, value in sorted(options.items()))


def ptq_table(records: list[dict[str, Any]], seed: int = 0) -> pd.DataFrame:
    """The PTQ table: perplexities, accuracies (%) and their average, with evaluation size and device."""
    rows: dict[tuple, dict[str, Any]] = {}
    keys: dict[tuple, list[dict[str, Any]]] = {}
    for record in best_records(of_seed(records, seed)):
        key, metrics = record["key"], record["metrics"]
        if key["kind"] == "mmlu" or get_method(key["method"]).track != "ptq":
            continue  # the LoRA-FT table's (lora_ft_table)
        config = _config_of(key)
        row = rows.setdefault(config, {
            "model": PAPER_NAMES.get(key["model"], key["model"]),
            "method": get_method(key["method"]).paper_name, "wbits": key["wbits"], "abits": key["abits"],
            "group_size": key["group_size"], "options": options_label(key["options"]), "devices": set()})
        keys.setdefault(config, []).append(key)
        row["devices"].add(f"{record['device']}, {key['dtype']}")
        if key["kind"] == "zeroshot":
            row[key["target"]] = metrics["acc"] * 100
            row[f"stderr_{key['target']}"] = metrics.get("acc_stderr", float("nan")) * 100
        else:
            row[key["target"]] = metrics["ppl"]
    table = pd.DataFrame(list(rows.values()))
    if table.empty:
        return table
    table["ppl_eval"] = [_eval_size(keys[c], "perplexity") for c in rows]
    table["task_eval"] = [_eval_size(keys[c], "zeroshot") for c in rows]
    table["device"] = ["; ".join(sorted(row.pop("devices"))) for row in rows.values()]
    table = table.drop(columns="devices")
    texts = [t for t in dict.fromkeys((*OFFLINE_TEXTS, *HUB_TEXTS)) if t in table]
    tasks = [t for t in TASKS if t in table]
    if len(tasks) == len(TASKS):
        table["avg"] = table[tasks].mean(axis=1, skipna=False)
    table = _add_paper_columns(table, texts + tasks + (["avg"] if "avg" in table else []))
    table = table.sort_values(["model", "method", "options", "group_size", "wbits"], ascending=[True, True, True, True, False],
                              na_position="first", key=_method_order)
    paper = [c for c in table.columns if c.startswith("paper_")]
    stderr = [f"stderr_{t}" for t in tasks]
    columns = CONFIG_COLUMNS + ["options"] + texts + tasks + (["avg"] if "avg" in table else []) + ["ppl_eval", "task_eval", "device"]
    return table[columns + paper + stderr].reset_index(drop=True)


def lora_ft_label(key: dict[str, Any]) -> str:
    """The paper's row name: FP16, NormalFloat (QLoRA's base, 0 steps), QLoRA, IR-QLoRA."""
    method = get_method(key["method"])
    if method.track != "lora_ft":
        return method.paper_name
    steps = method.options(**key["options"]).steps
    if steps == 0:
        return "NormalFloat" if method.name == "qlora" else "NormalFloat + ICQ"
    return method.paper_name


def lora_ft_table(records: list[dict[str, Any]], seed: int = 0) -> pd.DataFrame:
    """The LoRA-FT table in the paper's columns: 5-shot MMLU by category and overall, the five tasks and
    their average (accuracy in %), then our perplexities and the fine-tune's steps, tokens and time.

    One row per configuration and kind of device: the quick CPU rows and the full GPU rows are never mixed, and a
    configuration whose numbers come from two GPUs (FP16's five tasks on an H100, its MMLU on an H200) is one row
    that names both. An FP16 row is kept where it has an MMLU record, or where its model, dtype and evaluation sizes are
    those of a LoRA-FT row (then its MMLU cells are empty until measured)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for record in [best for group in by_device(of_seed(records, seed)).values() for best in best_records(group)]:
        key, metrics = record["key"], record["metrics"]
        lora_ft = get_method(key["method"]).track == "lora_ft"
        if not (lora_ft or key["method"] == "fp16"):
            continue
        slot = (_config_of(key), "cpu" if record["device"].startswith("cpu") else "gpu", key["dtype"])
        row = rows.setdefault(slot, {
            "model": PAPER_NAMES.get(key["model"], key["model"]), "method": lora_ft_label(key),
            "wbits": key["wbits"], "options": options_label(key["options"]), "devices": set(),
            "is_lora_ft": lora_ft, "limits": {}, "sizes": set()})
        row["devices"].add(record["device"])
        row["limits"][key["kind"]] = key["limit"]
        if lora_ft and "steps" in record.get("quantization", {}):
            run = record["quantization"]
            row.update({"steps": run["steps"], "response_tokens": run["response_tokens"],
                        "finetune_time_s": run["finetune_time_s"]})
        if key["kind"] == "mmlu":
            row.update({column: 100 * metrics[name] for name, column in MMLU_COLUMNS.items()})
            row["mmlu_questions"] = metrics["n"]
        else:
            row["sizes"].add((key["kind"], key["limit"], key["seqlen"]))
            row[key["target"]] = 100 * metrics["acc"] if key["kind"] == "zeroshot" else metrics["ppl"]
    # slot[0][0] is the model and slot[2] the dtype: an FP16 row qualifies by the model, dtype and sizes of a LoRA-FT
    # row, whichever GPU measured it
    lora_ft_sizes = {(slot[0][0], slot[2], size) for slot, row in rows.items() if row["is_lora_ft"]
                     for size in row["sizes"]}
    kept = [row for slot, row in rows.items() if row["is_lora_ft"] or "mmlu" in row["limits"]
            or (row["sizes"] and all((slot[0][0], slot[2], size) in lora_ft_sizes for size in row["sizes"]))]
    if not kept:
        return pd.DataFrame()
    for (_, _, dtype), row in rows.items():
        row["device"] = f"{' + '.join(sorted(row.pop('devices')))}, {dtype}"
    for row in kept:
        limits = row.pop("limits")
        row.pop("is_lora_ft"), row.pop("sizes")
        row["eval"] = ", ".join(f"{kind} {'full' if limit is None else f'limit={limit}'}"
                                for kind, limit in sorted(limits.items()))
    table = pd.DataFrame(kept)
    if all(task in table for task in TASKS):
        table["avg"] = table[list(TASKS)].mean(axis=1, skipna=False)
    texts = [t for t in dict.fromkeys((*OFFLINE_TEXTS, *HUB_TEXTS)) if t in table]
    metrics = [c for c in [*MMLU_COLUMNS.values(), *TASKS, "avg"] if c in table]
    extra = [c for c in ["mmlu_questions", "steps", "response_tokens", "finetune_time_s"] if c in table]
    table = table.astype({c: "Int64" for c in ["mmlu_questions", "steps", "response_tokens"] if c in table})
    order = {name: i for i, name in enumerate(["FP16", "NormalFloat", "NormalFloat + ICQ", "QLoRA", "IR-QLoRA"])}
    table = table.sort_values(["model", "device", "wbits", "method"], ascending=[True, True, False, True],
                              key=lambda c: c.map(order) if c.name == "method" else c)
    return table[["model", "method", "wbits", "options", *metrics, *texts, *extra, "eval", "device"]].reset_index(drop=True)


def finetune_loss_curves(records: list[dict[str, Any]], device: str) -> dict[str, dict[str, Any]]:
    """'QLoRA W4' -> {"curve": the stored loss curve, "steps": its steps}: the fine-tuned runs measured on `device`."""
    curves = {}
    for record in of_seed(records):
        run = record.get("quantization", {})
        if record["device"] == device and run.get("steps"):
            key = record["key"]
            label = f"{lora_ft_label(key)} W{key['wbits']:g}" + (f" [{options_label(key['options'])}]"
                                                                 if key["options"] else "")
            curves[label] = {"curve": run["loss_curve"], "steps": run["steps"]}
    return dict(sorted(curves.items()))


def paper_lora_ft_table() -> pd.DataFrame:
    """The paper's LoRA-FT table (LLaMA3-8B, Alpaca), `paper/reference/paper_lora_ft.csv`."""
    return pd.read_csv(PAPER_LORA_FT)


def evaluations_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Every evaluation of every configuration, one row each: how much the quick sweep's limits move the numbers.

    Where a configuration was scored twice (the CPU quick sweep, the GPU full sweep), its rows
    stand next to each other, with the evaluation size and device of each.
    """
    tables = [ptq_table(group) for group in by_device(records).values()]
    table = pd.concat([t for t in tables if not t.empty], ignore_index=True)
    table = table.drop(columns=[c for c in table.columns if c.startswith("paper_")])
    order = ["model", "method", "options", "group_size", "wbits", "device"]
    return table.sort_values(order, ascending=[True, True, True, True, False, True], na_position="first",
                             key=_method_order).reset_index(drop=True)


def compare_configs(store: Any, configs: dict[str, Any]) -> pd.DataFrame:
    """One row per target, one column per labelled RunConfig: perplexity, or accuracy in %, from the store
    (empty where a configuration has not been measured yet)."""
    def value(record: dict[str, Any] | None) -> float | None:
        if record is None:
            return None
        metrics = record["metrics"]
        return metrics["ppl"] if "ppl" in metrics else 100 * metrics["acc"]

    first = next(iter(configs.values()))
    return pd.DataFrame({label: {target: value(store.get(config.record_key(target))) for target in first.targets()}
                         for label, config in configs.items()}).round(2)


def _method_order(column: pd.Series) -> pd.Series:
    if column.name == "method":  # FP16 first, then in the order the methods are registered
        return column.map({m.paper_name: i for i, m in enumerate(METHODS.values())})
    return column


def _add_paper_columns(table: pd.DataFrame, measured: list[str]) -> pd.DataFrame:
    """paper_<column>: the paper's number for the same model and setting, where the model is LLaMA-3."""
    if not set(table["model"]) & set(PAPER_NAMES.values()):
        return table
    paper = pd.read_csv(PAPER_PTQ)
    paper = paper.astype({"wbits": float, "abits": int, "group_size": "Int64"})
    merged = table.astype({"wbits": float, "abits": int, "group_size": "Int64"})
    wanted = {PAPER_COLUMN.get(c, c) for c in measured}
    renamed = paper[CONFIG_COLUMNS + [c for c in paper.columns if c in wanted]].rename(
        columns={c: f"paper_{c}" for c in paper.columns if c in wanted})
    merged = merged.merge(renamed, on=CONFIG_COLUMNS, how="left")
    merged[["wbits", "group_size"]] = table[["wbits", "group_size"]].values
    paper_columns = [c for c in merged.columns if c.startswith("paper_")]
    merged.loc[merged["options"] != "", paper_columns] = float("nan")  # the paper ran each method's defaults
    return merged


def _format(value: Any) -> str:
    if isinstance(value, float):
        if pd.isna(value):
            return ""
        if value >= 1000:  # the paper's style: 2.2e3
            return f"{value:.1e}".replace("e+0", "e").replace("e+", "e")
        return f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def to_markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    return header + "".join("| " + " | ".join(_format(v) for v in row) + " |\n" for row in table.itertuples(index=False))


def full_sweep_rows(records: list[dict[str, Any]], methods: list[str]) -> pd.DataFrame:
    """The full (GPU) evaluations of the given methods (paper names, e.g. ["FP16", "RTN", "AWQ"]), for reading."""
    table = evaluations_table(records)
    full = table["ppl_eval"].str.startswith("full") & table["method"].isin(methods)
    return readable(table[full]).drop(columns=["model", "ppl_eval"]).reset_index(drop=True)


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: no standard-error columns, per-channel as an empty group size."""
    shown = table.drop(columns=[c for c in table.columns if c.startswith("stderr_")])
    if "group_size" in shown:
        shown = shown.assign(group_size=shown["group_size"].astype("Int64"))
    return shown.astype(object).where(shown.notna(), None)


def write_tables(table: pd.DataFrame, out_dir: Path, preamble: str = "", name: str = "ptq") -> None:
    """<name>.csv (full precision, with the accuracies' standard errors) and <name>.md (rounded, for reading)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if "group_size" in table:
        table = table.assign(group_size=table["group_size"].astype("Int64"))
    table.to_csv(out_dir / f"{name}.csv", index=False)
    (out_dir / f"{name}.md").write_text(preamble + to_markdown(readable(table)))
