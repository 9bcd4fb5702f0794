"""Our FP16 zero-shot scores beside the scores each model's publisher reports on its model card.

`paper/reference/model_cards.csv` holds the published numbers as their cards give them (task, shots, score, the
harness where the card names one). Ours are lm-eval's acc_norm (acc for WinoGrande, which has no acc_norm) on the
full sets, zero-shot, from the results store. A card row is comparable only where it is zero-shot too; even then
the harnesses differ in prompts and in how they normalise a continuation's likelihood, and our "FP16" is the
dequantized 4-bit GGUF, not the publisher's weights, so a difference of a point or two is expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

MODEL_CARDS = Path(__file__).resolve().parent.parent / "paper" / "reference" / "model_cards.csv"
ARC_AVERAGE = "arc (average)"  # a card's mean of ARC-Easy and ARC-Challenge


def fp16_zero_shot(records: list[dict[str, Any]], model: str) -> dict[str, float]:
    """task -> acc_norm (or acc) in % of `model`'s FP16 on the task's full set, and the ARC average."""
    scores = {}
    for record in sorted(records, key=lambda r: r["device"]):
        key = record["key"]
        if (key["model"], key["method"], key["kind"], key["limit"], key["seed"]) == (model, "fp16", "zeroshot", None, 0):
            scores.setdefault(key["target"], 100 * record["metrics"].get("acc_norm", record["metrics"]["acc"]))
    if "arc_easy" in scores and "arc_challenge" in scores:
        scores[ARC_AVERAGE] = (scores["arc_easy"] + scores["arc_challenge"]) / 2
    return scores


def card_comparison(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per published score: the card's, ours, their difference, and whether the card's is zero-shot."""
    records, cards = list(records), pd.read_csv(MODEL_CARDS)
    ours = {model: fp16_zero_shot(records, model) for model in cards["model"].unique()}
    cards["ours (0-shot)"] = [ours[row.model].get(row.task) for row in cards.itertuples()]
    cards["ours - card"] = cards["ours (0-shot)"] - cards["score"]
    cards["comparable"] = cards["shots"] == 0
    return cards[["model", "card_model", "task", "shots", "score", "ours (0-shot)", "ours - card", "comparable",
                  "harness"]].rename(columns={"score": "card"})
