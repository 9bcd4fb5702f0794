"""The paper's findings, each checked against the results store by a written rule.

A finding is a rule over one model's rows of the PTQ and LoRA-FT tables (`report.ptq_table`,
`report.lora_ft_table`). For each model in the store, and for LLaMA3-8B's numbers in the paper
(`paper/reference/`), the rule gives a verdict with the numbers that decide it:

- *holds*: the rows the rule needs are there and satisfy it;
- *differs*: they are there and do not;
- *not measurable here*: a row it needs is missing, or the model cannot show the finding at all
  (an FP16 MMLU at chance leaves nothing for 4 bits to lose).

Applying each rule to the paper's own numbers shows that the rule states the paper's finding: every
rule holds on LLaMA3-8B (and the scale rule on LLaMA3-8B against LLaMA3-70B). `paper/FINDINGS.md` is
written from these by the summary notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from llmq_core import report
from llmq_core.methods import get_method

HOLDS, DIFFERS, NOT_MEASURABLE = "holds", "differs", "not measurable here"
CHANCE_AVERAGE = 35.0  # the five tasks' chance accuracies (50, 25, 25, 25, 50), averaged
MMLU_CHANCE = 25.0
# Quantized weights (the decoder blocks' Linears), which set how much a model has to lose; tests/test_findings.py
# counts the offline models' from their checkpoints.
DECODER_LINEAR_PARAMETERS = {"smollm2-135m": 106_168_320, "smollm2-135m-offgrid": 106_168_320,
                             "gemma3-270m": 100_270_080, "qwen2.5-coder-1.5b": 1_310_195_712,
                             "LLaMA3-8B": 6_979_321_856, "LLaMA3-70B": 68_451_041_280}
LARGER_BY = 4  # two models are a scale contrast when one has at least 4x the other's quantized weights
MIN_SHARED_SETTINGS = 8  # and are compared once both have this many settings (the paper's two have 18)


@dataclass
class Verdict:
    verdict: str
    evidence: list[str] = field(default_factory=list)  # the numbers that decide it, one line each


class ModelRows:
    """One model's rows at each method's default options: PTQ rows by (method, wbits, group size, abits), and
    LoRA-FT rows by (method label, wbits), the most complete evaluation of each."""

    def __init__(self, name: str, ptq: pd.DataFrame, lora_ft: pd.DataFrame):
        self.name = name
        self.ptq = ptq[ptq["options"].fillna("") == ""] if "options" in ptq else ptq
        self.lora_ft = lora_ft
        fp16 = self.row("FP16", 16)
        self.texts = [] if fp16 is None else [t for t in fp16.index if t in PERPLEXITY_COLUMNS and pd.notna(fp16[t])]

    def row(self, method: str, wbits: float, group_size: int | None = None, abits: int = 16) -> pd.Series | None:
        table = self.ptq
        grouped = table["group_size"].isna() if group_size is None else table["group_size"] == group_size
        rows = table[(table["method"] == method) & (table["wbits"] == wbits) & (table["abits"] == abits) & grouped]
        return None if rows.empty else rows.iloc[0]

    def present(self, settings: list[tuple]) -> list[tuple[tuple, pd.Series]]:
        """(setting, row) for each of the settings (`row`'s arguments) that the model has a row of."""
        found = [(spec, self.row(*spec)) for spec in settings]
        return [(spec, row) for spec, row in found if row is not None]

    def lora_row(self, label: str, wbits: float) -> pd.Series | None:
        if self.lora_ft.empty:
            return None
        rows = self.lora_ft[(self.lora_ft["method"] == label) & (self.lora_ft["wbits"] == wbits)]
        return None if rows.empty else rows.iloc[0]


PERPLEXITY_COLUMNS = ("enwiki-excerpt", "brown", "ptb", "wikitext2", "c4")


def setting(method: str, wbits: float, group_size: int | None = None, abits: int = 16) -> str:
    """'GPTQ W3 g128', 'RTN W3', 'SmoothQuant W8A8'."""
    return f"{method} W{wbits:g}" + (f"A{abits}" if abits != 16 else "") + (f" g{group_size}" if group_size else "")


def ratios_to_fp16(rows: ModelRows, row: pd.Series) -> dict[str, float]:
    fp16 = rows.row("FP16", 16)
    return {text: row[text] / fp16[text] for text in rows.texts}


def describe_ratios(label: str, ratios: dict[str, float]) -> str:
    return f"{label}: " + ", ".join(f"{text} {ratio:.3g}x" for text, ratio in ratios.items()) + " FP16's perplexity"


Settings = list[tuple]  # (method, wbits, group size[, abits]) each: ModelRows.row's arguments


def near_lossless(rows: ModelRows, settings: Settings) -> Verdict:
    """Each row's perplexity at most 1.10x FP16's on every text, and its five-task average within 1 point. A row
    whose five tasks are not all measured counts as missing: one measured row that fails makes the verdict, but
    it holds only when every setting is measured."""
    fp16 = rows.row("FP16", 16)
    found = rows.present(settings)
    present = [(spec, row) for spec, row in found if pd.notna(row.get("avg"))]
    partial = [f"{setting(*spec)}: the five tasks not all measured" for spec, row in found if pd.isna(row.get("avg"))]
    needs = Verdict(NOT_MEASURABLE, [f"needs FP16 and {', '.join(setting(*s) for s in settings)}, each with its "
                                     "perplexities and the five tasks", *partial])
    if fp16 is None or pd.isna(fp16.get("avg")) or not present or not rows.texts:
        return needs
    evidence, passed = [], True
    for spec, row in present:
        ratios = ratios_to_fp16(rows, row)
        change = row["avg"] - fp16["avg"]
        passed &= all(r <= 1.10 for r in ratios.values()) and change >= -1.0
        evidence.append(describe_ratios(setting(*spec), ratios) + f"; five-task average {change:+.2f} points")
    if passed and len(present) < len(settings):
        return Verdict(NOT_MEASURABLE, needs.evidence + evidence)
    return Verdict(HOLDS if passed else DIFFERS, evidence + partial)


def w8_near_lossless(rows: ModelRows) -> Verdict:
    return near_lossless(rows, [("RTN", 8), ("GPTQ", 8), ("AWQ", 8), ("SmoothQuant", 8, None, 8)])


def rtn_collapses(rows: ModelRows) -> Verdict:
    """RTN W3 per channel and RTN W2 (g128 and per channel, where measured): at least 10x FP16's perplexity on every
    text, and a five-task average within 5 points of chance (35.0)."""
    settings = [("RTN", 3), ("RTN", 2, 128), ("RTN", 2)]
    present = rows.present(settings)
    if rows.row("FP16", 16) is None or rows.row("RTN", 3) is None or len(present) < 2:
        return Verdict(NOT_MEASURABLE, ["needs FP16, RTN W3 and RTN W2"])
    evidence, passed = [], True
    for spec, row in present:
        ratios = ratios_to_fp16(rows, row)
        ok = all(r >= 10 for r in ratios.values()) and row["avg"] - CHANCE_AVERAGE <= 5
        passed &= ok
        evidence.append(describe_ratios(setting(*spec), ratios) + f"; average accuracy {row['avg']:.1f} (chance 35.0)")
    return Verdict(HOLDS if passed else DIFFERS, evidence)


def far_better_than_rtn(method: str, wbits: int, group_size: int | None) -> Callable[[ModelRows], Verdict]:
    def check(rows: ModelRows) -> Verdict:
        """The method's perplexity at most half of RTN's at the same setting, on every text."""
        ours, rtn = rows.row(method, wbits, group_size), rows.row("RTN", wbits, group_size)
        if ours is None or rtn is None or not rows.texts:
            return Verdict(NOT_MEASURABLE, [f"needs {setting(method, wbits, group_size)} and "
                                            f"{setting('RTN', wbits, group_size)}"])
        ratios = {text: ours[text] / rtn[text] for text in rows.texts}
        line = (f"{setting(method, wbits, group_size)} / {setting('RTN', wbits, group_size)}: "
                + ", ".join(f"{text} {ours[text]:.4g} / {rtn[text]:.4g} = {r:.2f}" for text, r in ratios.items()))
        return Verdict(HOLDS if all(r <= 0.5 for r in ratios.values()) else DIFFERS, [line])
    return check


TWO_BIT_COLLAPSING = [("RTN", 2, 128), ("RTN", 2), ("GPTQ", 2, 128), ("GPTQ", 2), ("AWQ", 2, 128), ("AWQ", 2)]
TWO_BIT_SURVIVING = [("QuIP", 2), ("PB-LLM", 2, 128), ("PB-LLM", 1.7, 128), ("BiLLM", 1.1, 128), ("DB-LLM", 2, 128)]


def at_two_bits(settings: Settings, collapse: bool) -> Callable[[ModelRows], Verdict]:
    def check(rows: ModelRows) -> Verdict:
        present = rows.present(settings)
        methods = {s[0] for s in settings}
        if rows.row("FP16", 16) is None or {s[0] for s, _ in present} != methods:
            return Verdict(NOT_MEASURABLE, [f"needs FP16 and a row of each of {', '.join(sorted(methods))}"])
        evidence, passed = [], True
        for spec, row in present:
            ratios = ratios_to_fp16(rows, row)
            worst = max(ratios.values())
            passed &= (worst >= 100) if collapse else (worst < 100)
            evidence.append(describe_ratios(setting(*spec), ratios))
        return Verdict(HOLDS if passed else DIFFERS, evidence)
    return check


def best_other_at_two_bits(rows: ModelRows) -> dict[str, tuple[tuple, pd.Series]]:
    """Per text, the (setting, row) of lowest perplexity among the rows of at most 2 bits other than DB-LLM's."""
    others = rows.present(TWO_BIT_COLLAPSING + TWO_BIT_SURVIVING[:-1])
    return {text: min(others, key=lambda pair: pair[1][text]) for text in rows.texts} if others else {}


def dbllm_best_at_two_bits(rows: ModelRows) -> Verdict:
    """DB-LLM W2's perplexity the lowest of every row of at most 2 bits, on every text. One row below it makes the
    verdict; it holds only when the other low-bit methods (QuIP W2, PB-LLM W2 and W1.7, BiLLM) are all measured."""
    dbllm, best_other = rows.row("DB-LLM", 2, 128), best_other_at_two_bits(rows)
    if dbllm is None or not best_other:
        return Verdict(NOT_MEASURABLE, ["needs DB-LLM W2 g128 and other rows of at most 2 bits"])
    evidence, passed = [], True
    for text, (spec, best) in best_other.items():
        passed &= dbllm[text] <= best[text]
        evidence.append(f"{text}: DB-LLM {dbllm[text]:.4g}, the best other {setting(*spec)} {best[text]:.4g}")
    missing = [setting(*spec) for spec in TWO_BIT_SURVIVING[:-1] if rows.row(*spec) is None]
    if passed and missing:
        return Verdict(NOT_MEASURABLE, [f"needs {', '.join(missing)} too", *evidence])
    return Verdict(HOLDS if passed else DIFFERS, evidence)


def pbllm_improves_with_bits(rows: ModelRows) -> Verdict:
    """PB-LLM W2's perplexity at most W1.7's on every text."""
    two, less = rows.row("PB-LLM", 2, 128), rows.row("PB-LLM", 1.7, 128)
    if two is None or less is None or not rows.texts:
        return Verdict(NOT_MEASURABLE, ["needs PB-LLM W2 g128 and W1.7 g128"])
    line = "PB-LLM W2 / W1.7: " + ", ".join(f"{t} {two[t]:.4g} / {less[t]:.4g}" for t in rows.texts)
    return Verdict(HOLDS if all(two[t] <= less[t] for t in rows.texts) else DIFFERS, [line])


def smoothquant_w6a6_loses_a_little(rows: ModelRows) -> Verdict:
    """W6A6's perplexity above W8A8's and below 2x FP16's on every text."""
    w6, w8 = rows.row("SmoothQuant", 6, None, 6), rows.row("SmoothQuant", 8, None, 8)
    if w6 is None or w8 is None or rows.row("FP16", 16) is None or not rows.texts:
        return Verdict(NOT_MEASURABLE, ["needs FP16, SmoothQuant W8A8 and W6A6"])
    ratios = ratios_to_fp16(rows, w6)
    passed = all(w6[t] > w8[t] and ratios[t] < 2 for t in rows.texts)
    return Verdict(HOLDS if passed else DIFFERS, [describe_ratios("SmoothQuant W6A6", ratios),
                                                  describe_ratios("SmoothQuant W8A8", ratios_to_fp16(rows, w8))])


def smoothquant_w4a4_collapses(rows: ModelRows) -> Verdict:
    return at_two_bits([("SmoothQuant", 4, None, 4)], collapse=True)(rows)


def mmlu_measurable(rows: ModelRows) -> tuple[pd.Series | None, Verdict | None]:
    fp16 = rows.lora_row("FP16", 16)
    if fp16 is None or pd.isna(fp16.get("mmlu_avg")):
        return None, Verdict(NOT_MEASURABLE, ["needs FP16's MMLU"])
    if fp16["mmlu_avg"] < MMLU_CHANCE + 5:
        return None, Verdict(NOT_MEASURABLE, [f"FP16's MMLU is {fp16['mmlu_avg']:.1f} %, within 5 points of chance "
                                              "(25 %): there is nothing for 4 bits to lose"])
    return fp16, None


def normalfloat_loses_mmlu(rows: ModelRows) -> Verdict:
    """NormalFloat W4's MMLU below FP16's, and neither QLoRA's nor IR-QLoRA's W4 MMLU back at FP16's."""
    fp16, unmeasurable = mmlu_measurable(rows)
    if unmeasurable:
        return unmeasurable
    tuned = {label: rows.lora_row(label, 4) for label in ("NormalFloat", "QLoRA", "IR-QLoRA")}
    if any(row is None for row in tuned.values()):
        return Verdict(NOT_MEASURABLE, ["needs NormalFloat, QLoRA and IR-QLoRA at 4 bits"])
    passed = all(row["mmlu_avg"] < fp16["mmlu_avg"] for row in tuned.values())
    return Verdict(HOLDS if passed else DIFFERS, [f"MMLU: FP16 {fp16['mmlu_avg']:.1f}, " + ", ".join(
        f"{label} W4 {row['mmlu_avg']:.1f}" for label, row in tuned.items())])


def irqlora_at_least_qlora(column: str) -> Callable[[ModelRows], Verdict]:
    def check(rows: ModelRows) -> Verdict:
        """IR-QLoRA's score at least QLoRA's at every bit width both have."""
        if column == "mmlu_avg":
            _, unmeasurable = mmlu_measurable(rows)
            if unmeasurable:
                return unmeasurable
        pairs = [(bits, rows.lora_row("QLoRA", bits), rows.lora_row("IR-QLoRA", bits)) for bits in (4, 3, 2)]
        pairs = [(bits, q, ir) for bits, q, ir in pairs if q is not None and ir is not None and pd.notna(q[column])]
        if not pairs:
            return Verdict(NOT_MEASURABLE, ["needs QLoRA and IR-QLoRA at one bit width"])
        passed = all(ir[column] >= q[column] for _, q, ir in pairs)
        return Verdict(HOLDS if passed else DIFFERS, [f"W{bits}: IR-QLoRA {ir[column]:.2f}, QLoRA {q[column]:.2f}"
                                                      for bits, q, ir in pairs])
    return check


def larger_degrades_less(small: ModelRows, large: ModelRows) -> Verdict:
    """Over the settings both models have, the larger model loses fewer points of five-task average accuracy than
    the smaller on most of them."""
    def losses(rows: ModelRows) -> dict[str, float]:
        fp16 = rows.row("FP16", 16)
        return {setting(r.method, r.wbits, None if pd.isna(r.group_size) else int(r.group_size), r.abits):
                fp16["avg"] - r.avg for r in rows.ptq.itertuples() if r.method != "FP16" and pd.notna(r.avg)}
    shared = sorted(set(losses(small)) & set(losses(large)))
    if len(shared) < MIN_SHARED_SETTINGS:
        return Verdict(NOT_MEASURABLE, [f"{len(shared)} settings measured on both ({', '.join(shared) or 'none'}), "
                                        f"fewer than {MIN_SHARED_SETTINGS}"])
    small_losses, large_losses = losses(small), losses(large)
    fewer = [name for name in shared if large_losses[name] < small_losses[name]]
    return Verdict(HOLDS if 2 * len(fewer) > len(shared) else DIFFERS,
                   [f"{large.name} loses fewer points than {small.name} at {len(fewer)} of {len(shared)} settings "
                    f"({', '.join(fewer)})"])


@dataclass(frozen=True)
class Finding:
    number: str
    claim: str  # as the paper states it
    rule: str  # what is checked, in words
    check: Callable[[ModelRows], Verdict]
    methods: tuple[str, ...]  # the methods it is about (paper names): whose notebooks show it


FINDINGS = [
    Finding("1", "W8 is near lossless for every method",
            "RTN, GPTQ, AWQ W8 and SmoothQuant W8A8: perplexity at most 1.10x FP16's on every text, and a five-task "
            "average accuracy at most 1 point below FP16's (every one measured, for it to hold)", w8_near_lossless,
            ('RTN', 'GPTQ', 'AWQ', 'SmoothQuant')),
    Finding("2", "RTN collapses at W3 per channel and at W2",
            "RTN W3 per channel and RTN W2 (g128, per channel): at least 10x FP16's perplexity on every text, and a "
            "five-task average within 5 points of chance (35.0)", rtn_collapses, ('RTN',)),
    Finding("3a", "GPTQ is far better than RTN at 3 bits",
            "GPTQ W3 g128's perplexity at most half of RTN W3 g128's on every text",
            far_better_than_rtn("GPTQ", 3, 128),
            ('GPTQ', 'RTN')),
    Finding("3b", "AWQ is far better than RTN at 3 bits",
            "AWQ W3 g128's perplexity at most half of RTN W3 g128's on every text", far_better_than_rtn("AWQ", 3, 128),
            ('AWQ', 'RTN')),
    Finding("3c", "QuIP is far better than RTN at 3 bits",
            "QuIP W3's perplexity at most half of RTN W3's (both per channel) on every text",
            far_better_than_rtn("QuIP", 3, None), ('QuIP', 'RTN')),
    Finding("4a", "At 2 bits RTN, GPTQ and AWQ collapse",
            "each of their W2 rows (g128, per channel): at least 100x FP16's perplexity on some text",
            at_two_bits(TWO_BIT_COLLAPSING, collapse=True), ('RTN', 'GPTQ', 'AWQ')),
    Finding("4b", "At 2 bits and below QuIP, PB-LLM, BiLLM and DB-LLM do not collapse",
            "QuIP W2, PB-LLM W2 and W1.7, BiLLM W1.1, DB-LLM W2: below 100x FP16's perplexity on every text",
            at_two_bits(TWO_BIT_SURVIVING, collapse=False), ('QuIP', 'PB-LLM', 'BiLLM', 'DB-LLM')),
    Finding("4c", "DB-LLM is the best at 2 bits",
            "DB-LLM W2's perplexity the lowest of every row of at most 2 bits, on every text (QuIP, PB-LLM and BiLLM "
            "measured, for it to hold)", dbllm_best_at_two_bits,
            ('DB-LLM', 'BiLLM', 'PB-LLM')),
    Finding("4d", "PB-LLM is better at 2 bits than at 1.7",
            "PB-LLM W2's perplexity at most W1.7's on every text", pbllm_improves_with_bits, ('PB-LLM',)),
    Finding("5a", "SmoothQuant W8A8 is near lossless",
            "perplexity at most 1.10x FP16's on every text, and a five-task average at most 1 point below FP16's",
            lambda rows: near_lossless(rows, [("SmoothQuant", 8, None, 8)]), ('SmoothQuant',)),
    Finding("5b", "SmoothQuant W6A6 loses a little",
            "W6A6's perplexity above W8A8's and below 2x FP16's on every text", smoothquant_w6a6_loses_a_little,
            ('SmoothQuant',)),
    Finding("5c", "SmoothQuant W4A4 collapses",
            "W4A4: at least 100x FP16's perplexity on some text", smoothquant_w4a4_collapses, ('SmoothQuant',)),
    Finding("7a", "4-bit NormalFloat loses MMLU, and LoRA fine-tuning does not buy it back",
            "NormalFloat W4's 5-shot MMLU below FP16's, and QLoRA's and IR-QLoRA's W4 MMLU still below FP16's; "
            "measurable where FP16's MMLU is at least 5 points above chance", normalfloat_loses_mmlu,
            ('QLoRA', 'IR-QLoRA')),
    Finding("7b", "IR-QLoRA is at least as good as QLoRA on MMLU",
            "IR-QLoRA's MMLU at least QLoRA's at each bit width (where FP16's MMLU is 5 points above chance)",
            irqlora_at_least_qlora("mmlu_avg"), ('QLoRA', 'IR-QLoRA')),
    Finding("7c", "IR-QLoRA is at least as good as QLoRA on the five tasks",
            "IR-QLoRA's five-task average at least QLoRA's at each bit width", irqlora_at_least_qlora("avg"),
            ('QLoRA', 'IR-QLoRA')),
]
SCALE_FINDING = ("6", "The larger model degrades less",
                 f"for two models {LARGER_BY}x or more apart in quantized weights: the larger loses fewer points of "
                 f"five-task average accuracy than the smaller at most of the settings both have ({MIN_SHARED_SETTINGS} "
                 "at least)")


@dataclass(frozen=True)
class Experiment:
    """A controlled experiment on the cause stated for a deviation: what it changes, and its numbers, from the store."""
    finding: str  # the number of the finding whose deviation it tests
    model: str  # the model that differs
    cause: str  # the cause under test
    design: str  # what is changed, all else equal
    result: Callable[[list[dict]], list[str]]  # the deciding numbers, one line each, from the records


def records_of(records: list[dict], model: str, *methods: str) -> list[dict]:
    """The records of `model` quantized by one of `methods` (registry names), at every seed and option."""
    return [r for r in records if r["key"]["model"] == model and r["key"]["method"] in methods]


def over_rtn_on_and_off_the_grid(method: str) -> Callable[[list[dict]], list[str]]:
    def result(records: list[dict]) -> list[str]:
        """`method` W3 g128 / RTN W3 g128 per text on smollm2-135m and on smollm2-135m-offgrid, at each evaluation
        size that has all four rows (the same evaluation on both, so only the grid differs)."""
        table = report.evaluations_table(records) if records else pd.DataFrame()
        if table.empty:
            return ["not run yet"]
        models = ("smollm2-135m", "smollm2-135m-offgrid")
        rows = table[(table["wbits"] == 3) & (table["group_size"] == 128) & (table["options"] == "")
                     & table["method"].isin([method, "RTN"]) & table["model"].isin(models)]
        lines = []
        for size, same_size in rows.groupby("ppl_eval"):
            if len(set(zip(same_size["model"], same_size["method"]))) < 4:
                continue
            texts = [t for t in PERPLEXITY_COLUMNS if t in same_size and same_size[t].notna().all()]

            def perplexity(model: str, name: str, text: str) -> float:
                return same_size.loc[(same_size["model"] == model) & (same_size["method"] == name), text].iloc[0]
            ratios = {model: {t: perplexity(model, method, t) / perplexity(model, "RTN", t) for t in texts}
                      for model in models}
            devices = "; ".join(sorted(set(same_size["device"])))
            on, off = (ratios[model] for model in models)
            lines.append(f"perplexity over {size} ({devices}): {method} / RTN on the grid "
                         + ", ".join(f"{t} {on[t]:.2f}" for t in texts) + "; off the grid "
                         + ", ".join(f"{t} {off[t]:.2f}" for t in texts)
                         + f". Off the grid the rule's 0.5 is {'met' if all(r <= 0.5 for r in off.values()) else 'not met'}"
                         + f", and {method}'s lead over RTN is "
                         + f"{'larger' if all(off[t] < on[t] for t in texts) else 'not larger'} on every text")
        return lines or ["not run yet: the sweep's smollm2-135m-offgrid rows are missing"]
    return result


def dbllm_with_longer_distillation(model: str) -> Callable[[list[dict]], list[str]]:
    def result(records: list[dict]) -> list[str]:
        """DB-LLM W2 g128 at each number of distillation steps in the store, against the best other row of at most
        2 bits, at the evaluation the verdict reads."""
        rows = model_rows(records).get(model)
        table = report.evaluations_table(records) if records else pd.DataFrame()
        dbllm = None if rows is None else rows.row("DB-LLM", 2, 128)
        best = {} if rows is None else best_other_at_two_bits(rows)
        if dbllm is None or not best:
            return ["not run yet"]
        default_steps = get_method("dbllm").options().steps
        steps = sorted({r["key"]["options"].get("steps", default_steps) for r in records_of(records, model, "dbllm")})
        same = table[(table["model"] == model) & (table["method"] == "DB-LLM") & (table["ppl_eval"] == dbllm["ppl_eval"])]
        by_steps = {}
        for count in steps:
            label = "" if count == default_steps else report.options_label({"steps": count})
            found = same[same["options"] == label]
            if not found.empty and found[rows.texts].notna().all(axis=None):
                by_steps[count] = found.iloc[0]
        if len(by_steps) < 2:
            return [f"not run yet: DB-LLM at one number of steps only ({dbllm['ppl_eval']})"]
        best_from = [count for count in by_steps if all(by_steps[count][t] <= best[t][1][t] for t in rows.texts)]
        return [f"perplexity over {dbllm['ppl_eval']}, DB-LLM at " + " / ".join(map(str, by_steps))
                + " distillation steps: " + "; ".join(f"{t} " + " / ".join(f"{by_steps[c][t]:.4g}" for c in by_steps)
                                                     + f" (the best other: {setting(*best[t][0])} {best[t][1][t]:.4g})"
                                                     for t in rows.texts)
                + (f". DB-LLM is the best on every text at {', '.join(map(str, best_from))} steps" if best_from else
                   ". DB-LLM is not the best on every text at any of these step counts")]
    return result


def irqlora_against_qlora_across_seeds(model: str) -> Callable[[list[dict]], list[str]]:
    def result(records: list[dict]) -> list[str]:
        """The five-task averages of QLoRA and IR-QLoRA W4 at each seed in the store (the full evaluation): the gap
        between their means against the spread of each across seeds."""
        labels = ("QLoRA", "IR-QLoRA")
        averages: dict[str, dict[int, float]] = {label: {} for label in labels}
        for seed in sorted({r["key"]["seed"] for r in records_of(records, model, "qlora", "irqlora")}):
            table = report.lora_ft_table(records, seed)
            if table.empty:
                continue
            rows = table[(table["model"] == model) & (table["wbits"] == 4) & table["method"].isin(labels)
                         & ~table["eval"].str.contains("limit")]
            for row in rows.itertuples():
                if pd.notna(row.avg):
                    averages[row.method][seed] = row.avg
        shared = sorted(set(averages["QLoRA"]) & set(averages["IR-QLoRA"]))
        if len(shared) < 2:
            return ["not run yet: QLoRA and IR-QLoRA W4 at one seed only"]
        values = {label: [averages[label][seed] for seed in shared] for label in labels}
        means = {label: sum(v) / len(v) for label, v in values.items()}
        spread = max(max(v) - min(v) for v in values.values())
        gap = means["IR-QLoRA"] - means["QLoRA"]
        return [f"five-task average at W4, seeds {', '.join(map(str, shared))}: " + "; ".join(
            f"{label} " + " / ".join(f"{v:.2f}" for v in values[label]) + f" (mean {means[label]:.2f})"
            for label in labels) + f". IR-QLoRA's mean minus QLoRA's: {gap:+.2f} points; the larger spread of one "
            f"method across seeds: {spread:.2f} points, so the gap is "
            + ("within the seeds' spread" if abs(gap) <= spread else "larger than the seeds' spread")]
    return result


def pbllm_two_bits_against_one_point_seven(model: str) -> Callable[[list[dict]], list[str]]:
    def result(records: list[dict]) -> list[str]:
        """PB-LLM W2 / W1.7 per text at the verdict's evaluation: with our group constants at each calibration seed
        in the store, and with the reference's constants."""
        rows = model_rows(records).get(model)
        two = None if rows is None else rows.row("PB-LLM", 2, 128)
        if two is None:
            return ["not run yet"]
        reference = report.options_label({"reference_constants": True})
        pairs = {}
        for seed in sorted({r["key"]["seed"] for r in records_of(records, model, "pbllm")}):
            table = report.ptq_table(records, seed)
            same = table[(table["model"] == model) & (table["method"] == "PB-LLM") & (table["ppl_eval"] == two["ppl_eval"])]
            for label, options in ((f"our constants, seed {seed}", ""), (f"the reference's constants, seed {seed}", reference)):
                found = [same[(same["wbits"] == bits) & (same["options"] == options)] for bits in (2, 1.7)]
                if all(not rows_.empty for rows_ in found):
                    pairs[label] = (found[0].iloc[0], found[1].iloc[0])
        if len(pairs) < 2:
            return [f"not run yet: PB-LLM W2 and W1.7 at other seeds or with reference_constants=True ({two['ppl_eval']})"]
        holds = [label for label, (w2, w17) in pairs.items() if all(w2[t] <= w17[t] for t in rows.texts)]
        return [f"perplexity over {two['ppl_eval']}, PB-LLM W2 / W1.7: " + "; ".join(
            f"{label} " + ", ".join(f"{t} {w2[t]:.4g} / {w17[t]:.4g}" for t in rows.texts)
            for label, (w2, w17) in pairs.items())
            + f". W2 is at most W1.7 on every text in {len(holds)} of these {len(pairs)} runs"
            + (f" ({'; '.join(holds)})" if holds else "")]
    return result


def at_two_bits_on_a_larger_model(larger: str) -> Callable[[list[dict]], list[str]]:
    def result(records: list[dict]) -> list[str]:
        """Finding 4b's rule applied to a larger model's rows."""
        rows = model_rows(records).get(larger)
        if rows is None:
            return [f"not run yet: no {larger} rows"]
        verdict = at_two_bits(TWO_BIT_SURVIVING, collapse=False)(rows)
        size = DECODER_LINEAR_PARAMETERS[larger] / DECODER_LINEAR_PARAMETERS["smollm2-135m"]
        return [f"on {larger} ({size:.0f}x the quantized weights) the verdict is *{verdict.verdict}*: "
                + "; ".join(verdict.evidence)]
    return result


EXPERIMENT_MODELS = {"smollm2-135m-offgrid"}  # made for an experiment: no column of its own
GRID_CAUSE = ("the FP16 baseline's weights lie on a Q4_1 grid (16 levels per block of 32), on which RTN at 3 bits and "
              "groups of 128 loses less than on genuinely full-precision weights")
GRID_DESIGN = ("the same model with every decoder weight moved off the grid by seeded uniform noise of half a Q4_1 step "
               "(smollm2-135m-offgrid), quantized by {method} and RTN W3 g128 with the same calibration and evaluation")
EXPERIMENTS = [
    Experiment("3a", "smollm2-135m", GRID_CAUSE, GRID_DESIGN.format(method="GPTQ"), over_rtn_on_and_off_the_grid("GPTQ")),
    Experiment("3b", "smollm2-135m", GRID_CAUSE, GRID_DESIGN.format(method="AWQ"), over_rtn_on_and_off_the_grid("AWQ")),
    Experiment("4b", "smollm2-135m", "a 135M model is too small to keep 2-bit and binarized weights from collapsing",
               "the same rule on Qwen2.5-Coder-1.5B, 12x the quantized weights, with the same methods, calibration and "
               "evaluation", at_two_bits_on_a_larger_model("qwen2.5-coder-1.5b")),
    Experiment("4c", "smollm2-135m", "DB-LLM's distillation (256 steps of one 2048-token window, our schedule: the "
               "paper's is not public) is too short to bring its scales to their best",
               "the same DB-LLM W2 g128 with 16, 256, 1024 and 4096 steps, all else equal",
               dbllm_with_longer_distillation("smollm2-135m")),
    Experiment("4d", "smollm2-135m", "either our reading of PB-LLM (each group's salient mask, mean and scale chosen "
               "when the group is reached, from the weights as the error feedback left them, and averaged over the "
               "binarized weights only), or the method's sensitivity to small changes of its inputs",
               "PB-LLM W2 and W1.7 g128 with reference_constants=True (those set as the reference code, hahnyuan/PB-LLM, "
               "sets them: up front from the original weights, over the whole group with the salient weights as "
               "zeros), and with our constants at calibration seeds 1 and 2 (other windows), all else equal",
               pbllm_two_bits_against_one_point_seven("smollm2-135m")),
    Experiment("7c", "smollm2-135m", "the gap between IR-QLoRA and QLoRA is smaller than the run-to-run spread of a "
               "250-step fine-tune", "QLoRA and IR-QLoRA W4 trained again with seeds 1 and 2 (the adapters' "
               "initialisation and the order of the instruction pairs), all else equal",
               irqlora_against_qlora_across_seeds("smollm2-135m")),
]


def model_rows(records: list[dict]) -> dict[str, ModelRows]:
    """Each model in the store, from its most complete evaluations (the full GPU rows where there are some); not
    the models made for an experiment, which its result reads."""
    ptq, lora_ft = report.ptq_table(records), report.lora_ft_table(records)
    models = {}
    for name in sorted(set(ptq["model"]) - EXPERIMENT_MODELS if not ptq.empty else set()):
        lora = lora_ft[lora_ft["model"] == name] if not lora_ft.empty else lora_ft
        if not lora.empty and (~lora["eval"].str.contains("limit")).any():
            lora = lora[~lora["eval"].str.contains("limit")]
        models[name] = ModelRows(name, ptq[ptq["model"] == name], lora)
    return models


def paper_rows() -> dict[str, ModelRows]:
    """LLaMA3-8B and LLaMA3-70B as the paper reports them (its LoRA-FT table is LLaMA3-8B's)."""
    ptq = pd.read_csv(report.PAPER_PTQ).assign(options="")
    lora_ft = report.paper_lora_ft_table()
    return {name: ModelRows(name, ptq[ptq["model"] == name], lora_ft[lora_ft["model"] == name])
            for name in ("LLaMA3-8B", "LLaMA3-70B")}


def scale_verdicts(models: dict[str, ModelRows]) -> dict[str, Verdict]:
    """Finding 6 for each model: against the first model it is a scale contrast with."""
    sizes = {name: DECODER_LINEAR_PARAMETERS[name] for name in models if name in DECODER_LINEAR_PARAMETERS}
    verdicts = {}
    for name in models:
        partners = [other for other in sizes if name in sizes and other != name
                    and max(sizes[name], sizes[other]) >= LARGER_BY * min(sizes[name], sizes[other])]
        if not partners:
            listed = ", ".join(f"{model} {size / 1e6:.0f}M" for model, size in sizes.items())
            verdicts[name] = Verdict(NOT_MEASURABLE, [f"no model {LARGER_BY}x larger or smaller in quantized weights "
                                                      f"({listed})"])
            continue
        small, large = sorted([name, partners[0]], key=sizes.get)
        verdicts[name] = larger_degrades_less(models[small], models[large])
    return verdicts


def verdicts(records: list[dict]) -> tuple[list[str], dict[str, dict[str, Verdict]]]:
    """The column names (LLaMA3-8B (paper) first, then each model in the store) and, per finding number, each
    column's verdict."""
    ours, paper = model_rows(records), paper_rows()
    columns = {"LLaMA3-8B (paper)": paper["LLaMA3-8B"], **ours}
    table = {finding.number: {column: finding.check(rows) for column, rows in columns.items()} for finding in FINDINGS}
    table[SCALE_FINDING[0]] = {"LLaMA3-8B (paper)": scale_verdicts(paper)["LLaMA3-8B"], **scale_verdicts(ours)}
    return list(columns), table


def ordered_findings() -> list[tuple[str, str, str]]:
    """(number, claim, rule) of every finding, in the paper's order."""
    return sorted([(f.number, f.claim, f.rule) for f in FINDINGS] + [SCALE_FINDING], key=lambda f: (int(f[0][0]), f[0]))


def verdict_frame(records: list[dict]) -> pd.DataFrame:
    """One row per finding (number and claim), one column per model: its verdict."""
    return frame_of(*verdicts(records))


def frame_of(columns: list[str], table: dict[str, dict[str, Verdict]]) -> pd.DataFrame:
    return pd.DataFrame([{"#": number, "finding": claim, **{c: table[number][c].verdict for c in columns}}
                         for number, claim, _ in ordered_findings()])


def finding_section(number: str, claim: str, rule: str, verdicts_by_column: dict[str, Verdict], records: list[dict],
                    level: str = "##") -> list[str]:
    """A finding's heading, rule, each model's verdict and numbers, and for each model that differs the experiment
    on the stated cause (or that there is none yet)."""
    lines = ["", f"{level} {number}. {claim}", "", f"Rule: {rule}.", ""]
    lines += [f"- **{column}: {verdict.verdict}.** " + "; ".join(verdict.evidence)
              for column, verdict in verdicts_by_column.items()]
    for column, verdict in verdicts_by_column.items():
        if verdict.verdict != DIFFERS:
            continue
        tests = [e for e in EXPERIMENTS if e.finding == number and e.model == column]
        if not tests:
            lines.append(f"- *Experiment on why {column} differs:* none yet.")
        for test in tests:
            lines.append(f"- *Experiment on why {column} differs.* Cause under test: {test.cause}. Design: {test.design}. "
                         "Result: " + "; ".join(test.result(records)) + ".")
    return lines


def findings_markdown(records: list[dict]) -> str:
    """paper/FINDINGS.md: a verdict table, then each finding's rule and deciding numbers per model."""
    columns, table = verdicts(records)
    lines = ["# The paper's findings, checked against the results store", "",
             "Each finding of the paper is a rule, written beside it, applied by `llmq_core/findings.py` to each "
             "model's rows in the results store (the most complete evaluation of each configuration) and to "
             "LLaMA3-8B's numbers in the paper, which every rule reproduces. The offline models' \"FP16\" is itself "
             "a dequantized 4-bit model (SmolLM2-135M from Q4_1, Gemma-3-270M and Qwen2.5-Coder-1.5B from Q4_K_M): "
             "the only copies on a registry. Their perplexity texts are stand-ins (enwiki-excerpt for WikiText2, "
             "brown for C4). "
             "Rebuilt by `python run_all.py`.", "",
             report.to_markdown(frame_of(columns, table)).rstrip("\n")]
    for number, claim, rule in ordered_findings():
        lines += finding_section(number, claim, rule, table[number], records)
    return "\n".join(lines) + "\n"


def method_findings_markdown(method: str, records: list[dict]) -> str:
    """The findings about one method (its paper name), as in paper/FINDINGS.md: for its notebook."""
    _, table = verdicts(records)
    lines = []
    for finding in FINDINGS:
        if method in finding.methods:
            lines += finding_section(finding.number, finding.claim, finding.rule, table[finding.number], records, "###")
    return "\n".join(lines).lstrip("\n") + "\n"
