"""The task configurations lm-evaluation-harness reads: the five zero-shot tasks and 5-shot MMLU, on local data.

The five tasks' YAMLs in `task_templates/` `include` lm-eval's own task files, so the prompts (doc_to_text /
doc_to_choice / doc_to_target, hellaswag's process_docs, winogrande's partial scoring) are the official ones;
they only point the data at the asset cache. MMLU's are written from lm-eval's own `mmlu_<subject>` files
(`write_mmlu_tasks`), grouped as lm-eval groups them. `task_manager()` indexes only these.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from llmq_core.assets import asset_path, cache_dir
from llmq_core.errors import LlmqError

TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")
# HellaSwag's 40k continuations, and MMLU's 14k five-shot prompts, cost more than every other text and task together
EXPENSIVE_TASKS = ("hellaswag", "mmlu")
TEMPLATES = Path(__file__).parent / "task_templates"


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
    if task not in (*TASKS, "mmlu"):
        raise LlmqError(f"unknown task {task!r}; choose from {', '.join(TASKS)} or mmlu (5-shot)")


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
