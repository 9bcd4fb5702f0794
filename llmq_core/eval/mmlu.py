"""MMLU, 5-shot, through lm-evaluation-harness's own mmlu tasks, on the local copy of the data.

Each of the 57 subjects is lm-eval's `mmlu_<subject>` task (its prompt, "Answer:" and the
choices A-D, scored by log-likelihood), pointed at the asset cache; the dev split gives the five
examples, as in lm-eval's `--num_fewshot 5`. The subjects are grouped as lm-eval groups them
(humanities, STEM, social sciences, other), and each group's accuracy, like the overall one,
is the mean over its questions (lm-eval's weight_by_size), which is how the paper's table reads.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.eval.tasks import CATEGORIES, GROUP
from llmq_core.eval.zeroshot import run_lm_eval


def evaluate_mmlu(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, limit: int | None = None,
                  batch_size: int = 16, answers_file: Path | None = None) -> dict[str, float | None]:
    """acc over all questions and per category, and the number of questions (`limit`: the first N of each subject;
    `answers_file`: resume from, and checkpoint to, this file)."""
    output = run_lm_eval(model, tokenizer, [GROUP], limit, batch_size, answers_file=answers_file)
    results = output["results"]
    stderr = results[GROUP]["acc_stderr,none"]  # "N/A" where a subject has one question (limit=1)
    metrics = {"acc": float(results[GROUP]["acc,none"]), "acc_stderr": None if stderr == "N/A" else float(stderr)}
    metrics.update({category: float(results[f"{GROUP}_{category}"]["acc,none"]) for category in CATEGORIES})
    metrics["n"] = sum(int(n["effective"]) for n in output["n-samples"].values())
    return metrics
