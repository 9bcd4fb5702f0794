"""The local tasks are lm-eval's official ones on local data, and lm-eval's accuracy is checked by hand."""

import datasets
import pytest
import torch

from llmq_core.assets import asset_path
from llmq_core.eval import zeroshot


@pytest.fixture(scope="module")
def tasks(cached_model):
    return zeroshot.task_manager().load([f"llmq_{t}" for t in zeroshot.TASKS])["tasks"]


def first_docs(task, n=3):
    return list(task.test_docs() if task.has_test_docs() else task.validation_docs())[:n]


def test_all_five_tasks_load_the_full_local_sets(tasks):
    sizes = {name: len(list(task.test_docs() if task.has_test_docs() else task.validation_docs()))
             for name, task in tasks.items()}
    assert sizes == {"llmq_piqa": 1838, "llmq_arc_easy": 2376, "llmq_arc_challenge": 1172,
                     "llmq_hellaswag": 10042, "llmq_winogrande": 1267}


def test_prompts_are_the_official_ones(tasks):
    from lm_eval.tasks.hellaswag import utils as hellaswag
    from lm_eval.tasks.winogrande import preprocess_winogrande as winogrande

    for doc in first_docs(tasks["llmq_piqa"]):
        assert tasks["llmq_piqa"].doc_to_text(doc) == f"Question: {doc['goal']}\nAnswer:"
        assert tasks["llmq_piqa"].doc_to_choice(doc) == [doc["sol1"], doc["sol2"]]
    for doc in first_docs(tasks["llmq_arc_challenge"]):
        assert tasks["llmq_arc_challenge"].doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
        assert tasks["llmq_arc_challenge"].doc_to_choice(doc) == doc["choices"]["text"]
    raw = datasets.load_dataset("arrow", data_files=str(asset_path("tasks") / "hellaswag/validation.arrow"),
                                split="train").select(range(3))
    for ours, official in zip(first_docs(tasks["llmq_hellaswag"]), hellaswag.process_docs(raw)):
        assert tasks["llmq_hellaswag"].doc_to_text(ours) == official["query"]
        assert tasks["llmq_hellaswag"].doc_to_choice(ours) == official["choices"]
    for doc in first_docs(tasks["llmq_winogrande"]):
        assert tasks["llmq_winogrande"].doc_to_choice(doc) == winogrande.doc_to_choice(doc)
        assert tasks["llmq_winogrande"].doc_to_target(doc) == winogrande.doc_to_target(doc)


def test_piqa_accuracy_matches_an_independent_log_likelihood_computation(cached_model):
    model, tokenizer = cached_model
    limit = 16
    docs = datasets.load_dataset("arrow", data_files=str(asset_path("tasks") / "piqa/validation.arrow"),
                                 split="train").select(range(limit))
    correct = 0
    for doc in docs:
        context = f"Question: {doc['goal']}\nAnswer:"
        scores = []
        for solution in (doc["sol1"], doc["sol2"]):
            context_ids = tokenizer(context).input_ids
            whole = tokenizer(context + " " + solution).input_ids
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
            scores.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole))))
        correct += int(scores.index(max(scores)) == doc["label"])
    metrics = zeroshot.evaluate_task(model, tokenizer, "piqa", limit=limit, batch_size=4)
    assert metrics["n"] == limit
    assert metrics["acc"] == pytest.approx(correct / limit)
