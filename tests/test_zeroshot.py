"""The local tasks are lm-eval's official ones on local data, and lm-eval's accuracy is checked by hand."""

import datasets
import pytest
import torch

from llmq_core.assets import asset_path
from llmq_core.eval import tasks as task_configs
from llmq_core.eval import zeroshot


@pytest.fixture(scope="module")
def tasks(cached_model):
    return task_configs.task_manager().load([f"llmq_{t}" for t in task_configs.TASKS])["tasks"]


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


def test_mmlu_through_lm_eval_equals_our_own_5_shot_scoring_of_the_same_questions(cached_model):
    """An independent computation of 5-shot MMLU: the prompt built by hand from the local data (lm-eval's
    format: the subject's description, five dev examples with their answers, the question), each answer
    letter scored by the model's log-likelihood, the accuracy counted per question. A tiny random model, so
    that the 57 five-shot prompts are cheap."""
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmq_core.eval.mmlu import evaluate_mmlu
    from llmq_core.eval.tasks import CATEGORIES, lm_eval_mmlu_dir, subject_categories

    tokenizer = cached_model[1]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).eval()

    def as_text(doc: dict) -> str:
        return (f"{doc['question'].strip()}\nA. {doc['choices'][0]}\nB. {doc['choices'][1]}\n"
                f"C. {doc['choices'][2]}\nD. {doc['choices'][3]}\nAnswer:")

    correct: dict[str, list[bool]] = {category: [] for category in CATEGORIES}
    for subject, category in subject_categories().items():
        folder = asset_path("tasks") / "mmlu" / subject
        dev = datasets.Dataset.from_file(str(folder / "dev.arrow"))
        question = datasets.Dataset.from_file(str(folder / "test.arrow"))[0]
        description = yaml.safe_load((lm_eval_mmlu_dir() / f"mmlu_{subject}.yaml").read_text())["description"]
        context = description + "".join(f"{as_text(d)} {'ABCD'[d['answer']]}\n\n" for d in dev.select(range(5)))
        context += as_text(question)
        context_ids = tokenizer(context, add_special_tokens=False).input_ids
        scores = []
        for letter in "ABCD":
            ids = tokenizer(context + " " + letter, add_special_tokens=False).input_ids
            with torch.no_grad():  # the log-probabilities of the answer's tokens only
                hidden = model.model(torch.tensor([ids])).last_hidden_state[0, len(context_ids) - 1:-1]
                logprobs = model.lm_head(hidden).log_softmax(-1)
            scores.append(sum(float(logprobs[i, token]) for i, token in enumerate(ids[len(context_ids):])))
        correct[category].append(max(range(4), key=scores.__getitem__) == question["answer"])

    measured = evaluate_mmlu(model, tokenizer, limit=1, batch_size=8)
    every = [c for answers in correct.values() for c in answers]
    assert measured["n"] == len(every) == 57
    assert measured["acc"] == pytest.approx(sum(every) / len(every))
    for category, answers in correct.items():
        assert measured[category] == pytest.approx(sum(answers) / len(answers))


@pytest.fixture(scope="module")
def tiny_llama(cached_model):
    """A tiny random Llama with the real tokenizer: scoring paths compared on it cost nothing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = cached_model[1]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval(), tokenizer


def loglikelihood_requests() -> list:
    """Multi-token continuations of varied lengths, four one-letter answers sharing a context (lm-eval's
    one-token cache), a context ending in a space, an empty context, and a context longer than the model's 64 positions (left-truncated)."""
    from lm_eval.api.instance import Instance

    pairs = [("Question: How do you boil an egg?\nAnswer:", " Put it in boiling water for eight minutes."),
             ("Question: How do you boil an egg?\nAnswer:", " Freeze it."),
             ("The cat sat on the", " mat"), ("The dog sat on the ", "rug"),  # a trailing space moves on
             ("", "An empty context is scored after the BOS token."),
             ("Roses are red, violets are", " blue, sugar is sweet, and so are you."),
             ("word " * 100, " and a continuation after a context that must be truncated")]
    question = "The capital of France is\nA. Lyon\nB. Paris\nC. Nice\nD. Lille\nAnswer:"
    pairs += [(question, f" {letter}") for letter in "ABCD"]
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_continuation_scoring_gives_hflms_answers(tiny_llama, batch_size):
    from lm_eval.models.huggingface import HFLM

    from llmq_core.eval.lm import ContinuationHFLM

    model, tokenizer = tiny_llama
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size).loglikelihood(loglikelihood_requests())
    ours = ContinuationHFLM(pretrained=model, tokenizer=tokenizer,
                            batch_size=batch_size).loglikelihood(loglikelihood_requests())
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]
    assert [logprob for logprob, _ in ours] == pytest.approx([logprob for logprob, _ in theirs], abs=1e-4)


def test_continuation_scoring_tokenizes_as_hflm_does(tiny_llama, monkeypatch):
    """The batched, up-front tokenization hands `_loglikelihood_tokens` HFLM's own context and continuation ids."""
    from lm_eval.models.huggingface import HFLM

    from llmq_core.eval.lm import ContinuationHFLM

    model, tokenizer = tiny_llama
    tokenized, one_at_a_time = {}, []
    for lm_class in (HFLM, ContinuationHFLM):
        monkeypatch.setattr(lm_class, "_loglikelihood_tokens",
                            lambda self, requests, **kwargs: tokenized.setdefault(type(self), requests))
        lm_class(pretrained=model, tokenizer=tokenizer, batch_size=4).loglikelihood(loglikelihood_requests())
        encode_one = HFLM.tok_encode  # from here on, count the strings HFLM's own tok_encode still gets
        monkeypatch.setattr(HFLM, "tok_encode", lambda self, string, *args, **kwargs:
                            one_at_a_time.append(string) or encode_one(self, string, *args, **kwargs))
    assert tokenized[ContinuationHFLM] == tokenized[HFLM]
    assert len(tokenized[HFLM]) == len(loglikelihood_requests())
    assert one_at_a_time == ["An empty context is scored after the BOS token."]  # encoded without special tokens


def test_templates_compiled_once_render_lm_evals_mmlu_prompts(cached_model):
    """lm-eval's 5-shot MMLU contexts, built with its per-document template compilation and with ours."""
    from unittest import mock

    task = task_configs.task_manager().load(["llmq_mmlu_astronomy"])["tasks"]["llmq_mmlu_astronomy"]
    docs = list(task.test_docs())[:3]
    theirs = [task.fewshot_context(doc, num_fewshot=5) for doc in docs]
    with mock.patch("lm_eval.utils.apply_template", zeroshot.render_template):
        ours = [task.fewshot_context(doc, num_fewshot=5) for doc in docs]
    assert ours == theirs and theirs[0].count("Answer:") == 6


def test_continuation_scoring_computes_logits_only_where_continuations_are(tiny_llama):
    from llmq_core.eval.lm import ContinuationHFLM

    model, tokenizer = tiny_llama
    shapes = []  # (input length, positions the head computed) of each forward
    hook = model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(output.shape[:-1].numel()))
    inputs = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        ContinuationHFLM(pretrained=model, tokenizer=tokenizer, batch_size=1).loglikelihood(loglikelihood_requests())
    finally:
        hook.remove()
        inputs.remove()
    lengths, kept = shapes[0::2], shapes[1::2]
    # one forward per request, but one for the four answer letters; each computes its continuation's positions only
    # (all of the input where the context is only the BOS token)
    assert len(kept) == len(loglikelihood_requests()) - 3
    assert sum(kept) < sum(lengths) / 3 and min(kept) == 1 and max(kept) < max(lengths)


def test_a_cut_run_resumes_from_its_saved_answers(tiny_llama, tmp_path, monkeypatch):
    """Scoring stops after two batches (a time limit); a new run with the same answers file scores only the rest,
    and the answers are those of an uncut run."""
    from llmq_core.eval import lm

    model, tokenizer = tiny_llama
    uncut = lm.ContinuationHFLM(pretrained=model, tokenizer=tokenizer, batch_size=2).loglikelihood(
        loglikelihood_requests())
    monkeypatch.setattr(lm, "CHECKPOINT_INTERVAL_S", 0.0)
    score_batch, batches = lm.ContinuationHFLM._score_batch, []

    def cut_after_two_batches(self, inputs, scored):
        if len(batches) == 2:
            raise KeyboardInterrupt("time limit")
        batches.append(len(scored))
        return score_batch(self, inputs, scored)

    monkeypatch.setattr(lm.ContinuationHFLM, "_score_batch", cut_after_two_batches)
    answers_file = tmp_path / "answers.json"
    with pytest.raises(KeyboardInterrupt):
        lm.ContinuationHFLM(pretrained=model, tokenizer=tokenizer, batch_size=2,
                            answers_file=answers_file).loglikelihood(loglikelihood_requests())
    assert lm.saved_answer_count(answers_file) == sum(batches) > 0

    requests_scored = []
    monkeypatch.setattr(lm.ContinuationHFLM, "_score_batch", lambda self, inputs, scored: requests_scored.extend(
        scored) or score_batch(self, inputs, scored))
    resumed = lm.ContinuationHFLM(pretrained=model, tokenizer=tokenizer, batch_size=2,
                                  answers_file=answers_file).loglikelihood(loglikelihood_requests())
    assert len(requests_scored) == len(uncut) - sum(batches)
    assert [greedy for _, greedy in resumed] == [greedy for _, greedy in uncut]
    assert [logprob for logprob, _ in resumed] == pytest.approx([logprob for logprob, _ in uncut], abs=1e-4)
    assert lm.saved_answer_count(answers_file) == len(uncut)
