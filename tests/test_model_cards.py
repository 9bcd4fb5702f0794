"""Our FP16 zero-shot evaluation against the scores the models' publishers report (paper/reference/model_cards.csv)."""

import pytest

from llmq_core.model_cards import ARC_AVERAGE, card_comparison, fp16_zero_shot
from llmq_core.results import ResultStore


def record(target: str, acc: float, limit: int | None = None, **metrics: float) -> dict:
    key = {"model": "m", "method": "fp16", "kind": "zeroshot", "limit": limit, "seed": 0, "target": target}
    return {"key": key, "device": "cpu", "metrics": {"acc": acc, **metrics}}


def test_acc_norm_where_there_is_one_and_the_arc_average():
    scores = fp16_zero_shot([record("arc_easy", 0.5, acc_norm=0.6), record("arc_challenge", 0.2, acc_norm=0.3),
                             record("winogrande", 0.55), record("piqa", 0.9, limit=50, acc_norm=0.9)], "m")
    assert scores == pytest.approx({"arc_easy": 60.0, "arc_challenge": 30.0, "winogrande": 55.0, ARC_AVERAGE: 45.0})


def test_the_stored_fp16_rows_land_within_two_points_of_every_zero_shot_card_score():
    table = card_comparison(list(ResultStore().records()))
    comparable = table[table["comparable"] & table["ours (0-shot)"].notna()]
    assert set(comparable["model"]) >= {"smollm2-135m"}, "the committed store has SmolLM2's full FP16 rows"
    assert (comparable["ours - card"].abs() <= 2.0).all(), comparable.to_string()
