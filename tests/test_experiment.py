"""End to end on the embedded model with tiny sizes: quantize, evaluate, record, reuse."""

import math

import pytest
import torch

from llmq_core.data import calibration_windows, eval_tokens
from llmq_core.errors import LlmqError
from llmq_core.config import RunConfig
from llmq_core.evaluate import evaluate_and_record
from llmq_core.quantize import quantize_model
from llmq_core.models import load_model
from llmq_core.results import ResultStore, key_hash


def test_ptb_is_the_test_split_joined_with_spaces(cached_model):
    _, tokenizer = cached_model
    tokens = eval_tokens("ptb", tokenizer)
    assert tokens.shape[0] == 1 and 80_000 < tokens.shape[1] < 200_000
    assert tokenizer.decode(tokens[0, :8]).startswith("no it was n't black monday")


def test_calibration_windows_are_seeded_random_windows(cached_model):
    _, tokenizer = cached_model
    a = calibration_windows("enwiki-excerpt", tokenizer, nsamples=4, seqlen=64, seed=0)
    assert a.shape == (4, 64)
    assert torch.equal(a, calibration_windows("enwiki-excerpt", tokenizer, nsamples=4, seqlen=64, seed=0))
    assert not torch.equal(a, calibration_windows("enwiki-excerpt", tokenizer, nsamples=4, seqlen=64, seed=1))


def test_a_whole_text_is_tokenized_once_per_tokenizer(cached_model, monkeypatch):
    _, tokenizer = cached_model
    first = eval_tokens("ptb", tokenizer)
    assert first.shape[0] == 1 and first.shape[1] > 10000
    calls = []
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *args, **kwargs: calls.append(args))
    assert torch.equal(eval_tokens("ptb", tokenizer), first) and calls == []


def test_hub_only_texts_are_refused_offline(cached_model):
    with pytest.raises(LlmqError, match="--data hub"):
        eval_tokens("c4", cached_model[1])


def test_quantize_evaluate_record_and_reuse(cached_model, tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    config = RunConfig(method="rtn", wbits=2, group_size=128, datasets=["ptb"], tasks=["winogrande"], limit=4,
                       ppl_windows=2, seqlen=128)
    config.validate()
    model, tokenizer = load_model("smollm2-135m")
    report = quantize_model(model, config)
    # an fp16 scale and a 2-bit zero per group: 2 + 5 * 18 / 576 for 576-wide rows, 2 + 12 * 18 / 1536 for 1536
    assert 2 + 12 * 18 / 1536 < report["avg_bits"] < 2 + 5 * 18 / 576
    results = evaluate_and_record(model, tokenizer, config, report, store)
    assert set(results.index) == {"ptb", "winogrande"} and results.loc["winogrande", "n"] == 4
    fp16 = RunConfig(method="fp16", datasets=["ptb"], tasks=[], ppl_windows=2, seqlen=128)
    baseline = evaluate_and_record(cached_model[0], tokenizer, fp16, {}, store)
    assert results.loc["ptb", "ppl"] > 2 * baseline.loc["ptb", "ppl"]  # 2-bit RTN collapses
    assert math.isfinite(baseline.loc["ptb", "ppl"])

    def must_not_run(*args, **kwargs):
        raise AssertionError("a stored result was recomputed")

    monkeypatch.setattr("llmq_core.eval.targets.perplexity", must_not_run)
    monkeypatch.setattr("llmq_core.eval.targets.evaluate_task", must_not_run)
    again = evaluate_and_record(model, tokenizer, config, report, store)
    assert again.loc["ptb", "ppl"] == results.loc["ptb", "ppl"]


def test_calibration_is_in_the_record_key_only_for_methods_that_calibrate():
    rtn, gptq = RunConfig(method="rtn", wbits=4), RunConfig(method="gptq", wbits=4)
    assert "nsamples" not in rtn.record_key("ptb")  # RTN's committed records keep their keys
    key = gptq.record_key("ptb")
    assert (key["calibration"], key["nsamples"], key["calib_seqlen"]) == ("enwiki-excerpt", 128, 2048)
    assert RunConfig(method="gptq", wbits=4, data="hub", datasets=["ptb"]).calibration == "wikitext2"
    assert RunConfig(method="gptq", wbits=4, nsamples=32).record_key("ptb") != key


@pytest.mark.parametrize("changes, message", [
    ({"nsamples": 0}, "nsamples must be a positive integer"),
    ({"calibration": "c4-typo"}, "c4-typo"),
])
def test_bad_calibration_settings_are_clear_errors(cached_model, changes, message):
    with pytest.raises(LlmqError, match=message):
        RunConfig(method="gptq", wbits=4, **changes).validate()


def test_a_calibrated_method_without_a_tokenizer_is_a_clear_error(tiny_llama):
    with pytest.raises(LlmqError, match="pass the tokenizer"):
        quantize_model(tiny_llama, RunConfig(method="gptq", wbits=4))


def test_saved_answers_belong_to_the_exact_weights_and_go_when_the_record_is_stored(tiny_llama, tmp_path,
                                                                                    monkeypatch):
    from llmq_core.models import model_fingerprint

    fingerprint = model_fingerprint(tiny_llama)
    assert model_fingerprint(tiny_llama) == fingerprint
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert model_fingerprint(tiny_llama) != fingerprint

    monkeypatch.setenv("LLMQ_ANSWERS", str(tmp_path / "answers"))
    config = RunConfig(method="fp16", datasets=[], tasks=["piqa"], limit=2)
    answers_name = f"{key_hash(config.record_key('piqa'))}-{model_fingerprint(tiny_llama)}.json"
    left_by_a_cut_run = tmp_path / "answers" / answers_name
    left_by_a_cut_run.parent.mkdir()
    left_by_a_cut_run.write_text('{"a": [-1.0, true], "b": [-2.0, false]}')

    def evaluate_from_checkpoint(model, tokenizer, task, limit, batch_size, answers_file):
        assert answers_file == left_by_a_cut_run and answers_file.exists()
        return {"acc": 0.5, "n": 2}

    monkeypatch.setattr("llmq_core.eval.targets.evaluate_task", evaluate_from_checkpoint)
    store = ResultStore(tmp_path / "results")
    evaluate_and_record(tiny_llama, None, config, {}, store)
    record = store.get(config.record_key("piqa"))
    assert record["metrics"]["acc"] == 0.5 and record["resumed_answers"] == 2
    assert not left_by_a_cut_run.exists()


def test_a_registered_target_kind_is_scored_and_keyed_by_what_it_declares(tmp_path, monkeypatch):
    from llmq_core.eval import targets

    scored = []

    def score_words(model, tokenizer, target, settings, answers):
        scored.append((target, settings.limit, answers))
        return {"acc": 0.5, "n": settings.limit}

    kinds = {"words": targets.TargetKind("words", lambda t: t.startswith("words-"), "limit", False, False, score_words),
             **targets.TARGET_KINDS}
    monkeypatch.setattr(targets, "TARGET_KINDS", kinds)
    config = RunConfig(method="rtn", wbits=4, datasets=["ptb"], tasks=["words-a"], limit=3)
    key = config.record_key("words-a")
    assert (key["kind"], key["limit"], key["data"], key["seqlen"]) == ("words", 3, "tasks", None)
    assert config.record_key("ptb")["kind"] == "perplexity"  # the kinds registered before it still claim theirs
    store = ResultStore(tmp_path)
    store.put(config.record_key("ptb"), {"ppl": 9.0, "n": 1}, wall_time_s=1.0, device="cpu")
    table = evaluate_and_record(torch.nn.Linear(1, 1), None, config, {}, store)
    assert scored == [("words-a", 3, None)] and table.loc["words-a", "acc"] == 0.5
    assert store.get(key)["metrics"] == {"acc": 0.5, "n": 3}
