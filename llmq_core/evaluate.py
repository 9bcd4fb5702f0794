"""Scoring a configuration: every text and task that the results store lacks for it, each stored as one record."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.config import RunConfig
from llmq_core.eval.lm import saved_answer_count
from llmq_core.eval.targets import target_kind
from llmq_core.eval.tasks import EXPENSIVE_TASKS
from llmq_core.models import is_offloaded, model_fingerprint, place_for_evaluation
from llmq_core.results import ResultStore, Timer, answers_dir, key_hash


def evaluate_and_record(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: RunConfig,
                        quant_report: dict[str, Any], store: ResultStore | None = None,
                        force: bool = False) -> pd.DataFrame:
    """Score every text and task of `config` that the store lacks (all of them with `force`); one row each."""
    store = store or ResultStore()
    todo = config.targets() if force else config.pending(store)
    if todo and is_offloaded(model):  # larger than the GPU: its blocks over the visible GPUs, the rest in CPU memory
        place_for_evaluation(model)
    # the expensive tasks last, so that a run cut short (a batch job's time limit) has stored the cheaper records
    todo = sorted(todo, key=lambda target: target in EXPENSIVE_TASKS)
    # and the tasks' answers checkpointed, for these exact weights: a cut task resumes where it was
    checkpointed = [target for target in todo if target_kind(target).checkpointed]
    fingerprint = model_fingerprint(model) if checkpointed else None
    for target in tqdm(todo, desc=f"{config.method} w{config.wbits:g} evaluation"):
        if config.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        answers = (answers_dir() / f"{key_hash(config.record_key(target))}-{fingerprint}.json"
                   if target in checkpointed else None)
        if answers and force:
            answers.unlink(missing_ok=True)
        resumed = {"resumed_answers": saved_answer_count(answers)} if answers and answers.exists() else {}
        with Timer() as timer:
            metrics = target_kind(target).score(model, tokenizer, target, config, answers)
        store.put(config.record_key(target), metrics, wall_time_s=timer.seconds, device=config.device,
                  extra={"quantization": quant_report, **resumed}, replace=force)  # wall time: this run's part
        if answers:
            answers.unlink(missing_ok=True)  # the record holds the result now
    rows = []
    for target in config.targets():
        record = store.get(config.record_key(target))
        metrics = record["metrics"]
        rows.append({"target": target, "ppl": metrics.get("ppl"), "acc": metrics.get("acc"),
                     "acc_norm": metrics.get("acc_norm"), "n": metrics["n"], "wall_time_s": record["wall_time_s"],
                     "device": record["device"]})
    return pd.DataFrame(rows).set_index("target")
