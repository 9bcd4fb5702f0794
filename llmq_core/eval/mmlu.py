"""MMLU, 5-shot, through lm-evaluation-harness's own mmlu tasks, on the local copy of the data.

Each of the 57 subjects is lm-eval's `mmlu_<subject>` task (its prompt, "Answer:" and the
choices A-D, scored by log-likelihood), pointed at the asset cache; the dev split gives the five
examples, as in lm-eval's `--num_fewshot 5`. The subjects are grouped as lm-eval groups them
(humanities, STEM, social sciences, other), and each group's accuracy, like the overall one,
is the mean over its questions (lm-eval's weight_by_size), which is how the paper's table reads.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.assets import asset_path

CATEGORIES = ("humanities", "stem", "social_sciences", "other")
NUM_FEWSHOT = 5
GROUP = "llmq_mmlu"


def lm_eval_mmlu_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "mmlu" / "default"


def subject_categories() -> dict[str, str]:
    """Each subject's category, read from lm-eval's own task files (their `tag`)."""
    categories = {}
    for path in sorted(lm_eval_mmlu_dir().glob("mmlu_*.yaml")):
        config = yaml.safe_load(path.read_text())
        categories[config["dataset_name"]] = config["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    return categories


def write_mmlu_tasks(folder: Path) -> None:
    """Our task and group YAMLs in `folder`: lm-eval's subject tasks on local data, our four groups."""
    data = asset_path("tasks") / "mmlu"
    folder.mkdir(parents=True, exist_ok=True)
    for subject, category in subject_categories().items():
        task = {"include": str(lm_eval_mmlu_dir() / f"mmlu_{subject}.yaml"), "task": f"{GROUP}_{subject}",
                "tag": f"{GROUP}_{category}_tasks", "dataset_path": "arrow", "dataset_name": None,
                "num_fewshot": NUM_FEWSHOT,  # in the task, not at the call, where lm-eval warns once per subject
                "dataset_kwargs": {"data_files": {"test": str(data / subject / "test.arrow"),
                                                  "dev": str(data / subject / "dev.arrow")}}}
        write_if_changed(folder / f"{GROUP}_{subject}.yaml", yaml.safe_dump(task, sort_keys=False))
    aggregate = [{"metric": "acc", "weight_by_size": True}]
    for category in CATEGORIES:
        group = {"group": f"{GROUP}_{category}", "task": [f"{GROUP}_{category}_tasks"],
                 "aggregate_metric_list": aggregate}
        write_if_changed(folder / f"_{GROUP}_{category}.yaml", yaml.safe_dump(group, sort_keys=False))
    group = {"group": GROUP, "task": [f"{GROUP}_{category}" for category in CATEGORIES],
             "aggregate_metric_list": aggregate}
    write_if_changed(folder / f"_{GROUP}.yaml", yaml.safe_dump(group, sort_keys=False))


def write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def evaluate_mmlu(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, limit: int | None = None,
                  batch_size: int = 16, answers_file: Path | None = None) -> dict[str, float | None]:
    """acc over all questions and per category, and the number of questions (`limit`: the first N of each subject;
    `answers_file`: resume from, and checkpoint to, this file)."""
    from llmq_core.eval.zeroshot import run_lm_eval  # its task manager indexes our MMLU tasks with the five others

    output = run_lm_eval(model, tokenizer, [GROUP], limit, batch_size, answers_file=answers_file)
    results = output["results"]
    stderr = results[GROUP]["acc_stderr,none"]  # "N/A" where a subject has one question (limit=1)
    metrics = {"acc": float(results[GROUP]["acc,none"]), "acc_stderr": None if stderr == "N/A" else float(stderr)}
    metrics.update({category: float(results[f"{GROUP}_{category}"]["acc,none"]) for category in CATEGORIES})
    metrics["n"] = sum(int(n["effective"]) for n in output["n-samples"].values())
    return metrics
