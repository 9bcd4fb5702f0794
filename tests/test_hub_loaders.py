"""The hub loaders (wikitext2, c4, ptb) on stand-in data: the hub itself is not reachable in tests."""

import datasets
import pytest
import torch

from llmq_core import data


class CharTokenizer:
    """One token per character, enough to check joins and windows."""

    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[ord(c) % 256 for c in text]])
        return type("Encoding", (), {"input_ids": ids})()


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, data_files=None):
        calls.append((path, name, split, data_files))
        if path == "wikitext":
            return datasets.Dataset.from_dict({"text": ["a", "", "b"]})
        if path == "ptb_text_only":
            return datasets.Dataset.from_dict({"sentence": ["x y", "z"]})
        if path == "allenai/c4":
            return datasets.Dataset.from_dict({"text": ["short", "l" * 50, "m" * 60]})
        raise AssertionError(path)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def decode(ids: torch.Tensor) -> str:
    return "".join(chr(i) for i in ids[0].tolist())


def test_wikitext2_is_the_test_split_joined_with_blank_lines(fake_hub):
    assert decode(data.eval_tokens("wikitext2", CharTokenizer(), source="hub")) == "a\n\n\n\nb"
    assert fake_hub == [("wikitext", "wikitext-2-raw-v1", "test", None)]


def test_ptb_is_the_test_split_joined_with_spaces(fake_hub):
    assert decode(data.eval_tokens("ptb", CharTokenizer(), source="hub")) == "x y z"
    assert fake_hub == [("ptb_text_only", "penn_treebank", "test", None)]


def test_c4_is_256_seeded_windows_of_documents_longer_than_seqlen(fake_hub):
    tokens = data.eval_tokens("c4", CharTokenizer(), source="hub", seqlen=40, seed=0)
    assert tokens.shape == (1, 256 * 40)
    assert set(decode(tokens)) == {"l", "m"}  # "short" is never long enough
    assert torch.equal(tokens, data.eval_tokens("c4", CharTokenizer(), source="hub", seqlen=40, seed=0))
    assert fake_hub[0][0] == "allenai/c4"
    assert fake_hub[0][3] == {"validation": "en/c4-validation.00000-of-00008.json.gz"}


def test_c4_is_not_a_calibration_text(fake_hub):
    with pytest.raises(data.LlmqError, match="calibrate on wikitext2 or ptb"):
        data.calibration_windows("c4", CharTokenizer(), nsamples=2, seqlen=8, source="hub")
