"""Zero-shot accuracy through lm-evaluation-harness, on local copies of the five task sets.

The task YAMLs in `tasks/` `include` lm-eval's own task files, so the prompts
(doc_to_text / doc_to_choice / doc_to_target, hellaswag's process_docs, winogrande's
partial scoring) are the official ones; they only point the data at the asset cache.
lm-eval builds the requests and computes the metrics; the log-likelihoods come from its HFLM
model, through `lm.ContinuationHFLM`, which scores only the continuation positions and is tested
to give HFLM's answers.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from unittest import mock

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.assets import asset_path, cache_dir
from llmq_core.eval.mmlu import write_if_changed, write_mmlu_tasks

TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")
# HellaSwag's 40k continuations, and MMLU's 14k five-shot prompts, cost more than every other text and task together
EXPENSIVE_TASKS = ("hellaswag", "mmlu")
TEMPLATES = Path(__file__).parent / "tasks"


def task_config_dir() -> Path:
    """Render the task templates with this machine's lm-eval and cache paths; returns their folder."""
    import lm_eval.tasks

    out = cache_dir() / "lm_eval_tasks"
    out.mkdir(parents=True, exist_ok=True)
    values = {"lm_eval_tasks": Path(lm_eval.tasks.__file__).parent.as_posix(), "data": asset_path("tasks").as_posix()}
    for template in TEMPLATES.glob("*.yaml"):
        text = template.read_text()
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
        write_if_changed(out / template.name, text)
    write_mmlu_tasks(out / "mmlu")
    return out


@functools.lru_cache(maxsize=1)
def task_manager():
    """Only our tasks (they include lm-eval's by path): indexing all it ships takes seconds (bench/cpu_eval.py)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_config_dir()), include_defaults=False)


def check_task_name(task: str) -> None:
    from llmq_core.errors import LlmqError

    if task not in (*TASKS, "mmlu"):
        raise LlmqError(f"unknown task {task!r}; choose from {', '.join(TASKS)} or mmlu (5-shot)")


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
