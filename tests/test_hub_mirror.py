"""The hub mirror: data.py's and instructions.py's hub loaders, unchanged and offline, read the stand-ins from it."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmq_core import assets, data, hub_mirror
from llmq_core.data import C4_VALIDATION_SHARD
from llmq_core.lora import instructions

REPO = Path(__file__).resolve().parents[1]
# The loaders run in a fresh interpreter: datasets.config and huggingface_hub.constants read
# HF_DATASETS_CACHE and the offline flags when they are imported, which this process has already done.
# Every socket connection and name lookup there fails and is recorded.
LOADERS = r'''
import socket, sys, torch
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("no network in this test")
socket.socket.connect = socket.getaddrinfo = refuse

import datasets
from transformers import AutoTokenizer
from llmq_core import data
from llmq_core.lora import instructions

class Chars:
    """One token per character, so that decoding is exact."""
    def __call__(self, text, return_tensors=None):
        return type("Encoding", (), {"input_ids": torch.tensor([[ord(c) for c in text]])})()

out, tokenizer, seqlen = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = Chars() if tokenizer == "chars" else AutoTokenizer.from_pretrained(tokenizer)
result = {
    "wikitext2": data.eval_tokens("wikitext2", tokenizer, source="hub"),
    "ptb": data.eval_tokens("ptb", tokenizer, source="hub"),
    "c4": data.eval_tokens("c4", tokenizer, source="hub", seqlen=seqlen),
    "calibration": data.calibration_windows("wikitext2", tokenizer, nsamples=4, seqlen=seqlen, source="hub"),
    "alpaca": instructions.load_instructions("alpaca"),
    "descriptions": [datasets.load_dataset(*args, split=split, **kwargs).info.description for args, split, kwargs in [
        (("wikitext", "wikitext-2-raw-v1"), "validation", {}), (("ptb_text_only", "penn_treebank"), "train", {}),
        (("allenai/c4",), "validation", {"data_files": {"validation": data.C4_VALIDATION_SHARD}}),
        (("tatsu-lab/alpaca",), "train", {})]],
    "attempts": attempts,
}
torch.save(result, out)
'''


def run_loaders(mirror: Path, tokenizer: str, seqlen: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Build the mirror, set its variables and run the hub loaders on it, with HF_HOME a folder that never exists."""
    for key, value in hub_mirror.build_mirror(mirror).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HOME", str(mirror.parent / "empty-hf-home"))
    out = mirror.parent / "loaded.pt"
    subprocess.run([sys.executable, "-c", LOADERS, str(out), tokenizer, str(seqlen)], cwd=REPO, check=True)
    assert not (mirror.parent / "empty-hf-home").exists()
    return torch.load(out, weights_only=False)


def decode(ids: torch.Tensor) -> str:
    return "".join(map(chr, ids.tolist()))


def paragraphs(words: int, count: int) -> str:
    return "\n\n".join(" ".join(f"w{p}x{i}" for i in range(words)) for p in range(count))


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory) -> Path:
    """Small asset folders in the cache's layout, with text that a tokenizer could get wrong (accents, quotes)."""
    root = tmp_path_factory.mktemp("assets")
    texts = {
        "enwiki-excerpt/train.txt": "= Café =\n\n" + paragraphs(30, 6) + "\n",
        "enwiki-excerpt/test.txt": "= Über \"quotes\" =\n\nfirst paragraph.\n\n\nafter a blank line\n",
        "ptb/train.txt": "a b c\nd e\n", "ptb/valid.txt": "v w\n", "ptb/test.txt": "the <unk> n\nsecond one\n",
        "brown/test.txt": paragraphs(100, 50) + "\n",  # two documents of 2,000 words and more
        "sharegpt/train.jsonl": "".join(json.dumps({"instruction": f"do {i}", "input": "", "output": f"done {i} ✓",
                                                    "id": str(i)}) + "\n" for i in range(3)),
    }
    for name, text in texts.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def loaded(tiny_assets, tmp_path_factory) -> tuple[Path, dict]:
    """The mirror of the tiny assets, and what the hub loaders read from it."""
    mirror = tmp_path_factory.mktemp("mirror") / "hub-mirror"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(hub_mirror, "asset_path", lambda name: tiny_assets / name)
        return mirror, run_loaders(mirror, "chars", 64, monkeypatch)


def test_wikitext2_and_ptb_are_the_stand_in_test_texts(loaded, tiny_assets):
    _, result = loaded
    assert decode(result["wikitext2"][0]) == (tiny_assets / "enwiki-excerpt/test.txt").read_text()
    assert decode(result["ptb"][0]) == "the <unk> n second one"


def test_calibration_windows_come_from_the_stand_in_training_text(loaded, tiny_assets):
    _, result = loaded
    train = (tiny_assets / "enwiki-excerpt/train.txt").read_text()
    assert result["calibration"].shape == (4, 64)
    assert all(decode(window) in train for window in result["calibration"])


def test_c4_is_drawn_from_the_brown_documents_of_the_shard(loaded, tiny_assets):
    mirror, result = loaded
    with gzip.open(mirror / "hub/allenai/c4" / C4_VALIDATION_SHARD, "rt") as f:
        rows = [json.loads(line) for line in f]
    assert [set(row) for row in rows] == [{"text", "timestamp", "url"}] * 2
    assert "\n\n".join(row["text"] for row in rows) == (tiny_assets / "brown/test.txt").read_text().strip()
    windows = result["c4"].view(256, 64)
    assert all(any(decode(window) in row["text"] for row in rows) for window in windows)


def test_alpaca_has_its_columns_and_the_sharegpt_pairs(loaded):
    _, result = loaded
    assert result["alpaca"] == [{"instruction": f"do {i}", "input": "", "output": f"done {i} ✓",
                                 "text": hub_mirror.ALPACA_TEXT.format(instruction=f"do {i}", output=f"done {i} ✓")}
                                for i in range(3)]


def test_every_dataset_is_labelled_a_stand_in_and_nothing_used_the_network(loaded):
    mirror, result = loaded
    assert result["attempts"] == []
    assert all(text.startswith("offline stand-in for ") for text in result["descriptions"])
    cards = list(mirror.glob("hub/**/README.md")) + list(mirror.glob("datasets/*/README.md"))
    assert len(cards) == 8 and all("offline stand-in" in card.read_text() for card in cards)


def test_brown_documents_keep_every_paragraph_in_order():
    text = paragraphs(700, 10)
    documents = hub_mirror.brown_documents(text, min_words=2000)
    assert "\n\n".join(documents) == text
    assert [len(d.split()) for d in documents] == [2100, 2100, 2800]  # the short tail joins the last


def test_the_command_line_prints_the_exports_and_never_overwrites_by_accident(tiny_assets, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setattr(hub_mirror, "asset_path", lambda name: tiny_assets / name)
    out = tmp_path / "mirror"
    assert hub_mirror.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out == (f"export HF_DATASETS_CACHE={out / 'datasets'} HF_HUB_OFFLINE=1 "
                                       "HF_DATASETS_OFFLINE=1\n")
    assert hub_mirror.main(["--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not an empty folder" in error and "--force" in error
    assert hub_mirror.main(["--out", str(out), "--force"]) == 0


def test_a_failed_build_leaves_nothing(tiny_assets, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hub_mirror, "asset_path", lambda name: tiny_assets / name)
    monkeypatch.setattr(hub_mirror, "_prepare", broken)
    with pytest.raises(RuntimeError):
        hub_mirror.build_mirror(tmp_path / "mirror")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_real_assets_give_the_hub_loaders_the_offline_texts_and_tokens(tmp_path, monkeypatch):
    """Through the hub loaders, the mirror gives the same token ids as the offline loaders on the same assets."""
    if not all(assets.status()[name] for name in ("enwiki-excerpt", "brown", "ptb", "sharegpt", "smollm2-135m")):
        pytest.skip("asset cache not filled: run `python -m llmq_core.assets fetch`")
    from transformers import AutoTokenizer

    model = assets.asset_path("smollm2-135m")
    result = run_loaders(tmp_path / "mirror", str(model), 2048, monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert result["attempts"] == []
    assert torch.equal(result["wikitext2"], data.eval_tokens("enwiki-excerpt", tokenizer))
    assert torch.equal(result["ptb"], data.eval_tokens("ptb", tokenizer))
    assert torch.equal(result["calibration"], data.calibration_windows("enwiki-excerpt", tokenizer, 4, 2048))
    assert result["c4"].shape == (1, 256 * 2048)
    with gzip.open(tmp_path / "mirror/hub/allenai/c4" / C4_VALIDATION_SHARD, "rt") as f:
        assert min(len(tokenizer(json.loads(line)["text"]).input_ids) for line in f) > 2048  # data.py draws from any
    sharegpt = instructions.load_instructions("sharegpt")
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in result["alpaca"]] == \
           [{k: r[k] for k in ("instruction", "input", "output")} for r in sharegpt]
