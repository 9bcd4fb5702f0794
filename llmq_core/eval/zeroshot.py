"""Zero-shot accuracy through lm-evaluation-harness, on the task configurations of `tasks.py`.

lm-eval builds the requests and computes the metrics; the log-likelihoods come from its HFLM
model, through `lm.ContinuationHFLM`, which scores only the continuation positions and is tested
to give HFLM's answers."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from unittest import mock

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.eval.tasks import check_task_name, task_manager


@functools.lru_cache(maxsize=None)
def compiled_template(template: str):
    """A task's Jinja template, compiled once in lm-eval's own environment. lm-eval compiles it again for every
    document it renders (`utils.apply_template`): 11 ms each time, six times per 5-shot MMLU question, about
    2.5 minutes of a full MMLU run on 2 CPU cores. The rendered texts are the same (tests/test_zeroshot.py)."""
    from lm_eval.utils import env

    return env.from_string(template)


def render_template(template: str, doc: dict) -> str:
    return compiled_template(template).render(**doc)


def run_lm_eval(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task_names: list[str],
                limit: int | None, batch_size: int, lm_class: type | None = None, answers_file: Path | None = None
                ) -> dict:
    """lm-eval's simple_evaluate on our task configs (the five tasks and MMLU); its whole output. The model is
    lm-eval's HFLM scoring continuation positions only (`ContinuationHFLM`: same answers, less memory and time,
    and with `answers_file` a resumable checkpoint), unless `lm_class` names another (bench/lm_eval_scoring.py
    passes HFLM itself)."""
    from lm_eval import simple_evaluate

    from llmq_core.eval.lm import ContinuationHFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    checkpoint = {"answers_file": answers_file} if answers_file else {}
    lm = (lm_class or ContinuationHFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **checkpoint)
    with torch.no_grad(), mock.patch("lm_eval.utils.apply_template", render_template):
        return simple_evaluate(model=lm, tasks=task_names, task_manager=task_manager(),
                               limit=limit, log_samples=False, verbosity="WARNING")


def evaluate_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: str,
                  limit: int | None = None, batch_size: int = 16, answers_file: Path | None = None
                  ) -> dict[str, float]:
    """acc and acc_norm (with their standard errors) of one task, and the number of documents scored
    (`answers_file`: resume from, and checkpoint to, this file; see `lm.AnswerCheckpoint`)."""
    check_task_name(task)
    name = f"llmq_{task}"
    output = run_lm_eval(model, tokenizer, [name], limit, batch_size, answers_file=answers_file)
    scores = output["results"][name]
    metrics = {metric: float(scores[f"{metric},none"]) for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
               if isinstance(scores.get(f"{metric},none"), (int, float))}
    metrics["n"] = int(output["n-samples"][name]["effective"])
    return metrics
