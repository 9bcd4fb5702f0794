"""Text for perplexity and calibration.

Two sources, chosen by `data=`:
- "offline": the asset cache. PTB is the real PTB; the WikiText2 and C4 columns of the paper
  have stand-ins that are labelled by what they are: "enwiki-excerpt" and "brown".
- "hub": the seed repo's loaders: wikitext-2-raw-v1 test joined with "\\n\\n"; C4's en validation
  shard 00000-of-00008, 256 random 2048-token windows with seed 0; ptb_text_only test joined with " ".
"""

from __future__ import annotations

import random
import weakref
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from llmq_core.assets import asset_path
from llmq_core.errors import LlmqError

OFFLINE_TEXTS = ("enwiki-excerpt", "brown", "ptb")
HUB_TEXTS = ("wikitext2", "c4", "ptb")
# Which paper column each text stands in for.
PAPER_COLUMN = {"enwiki-excerpt": "wikitext2", "brown": "c4", "ptb": "ptb", "wikitext2": "wikitext2", "c4": "c4"}
C4_VALIDATION_SHARD = "en/c4-validation.00000-of-00008.json.gz"
# Whole text splits as token ids, per tokenizer object: a notebook draws calibration windows for its worked
# example and again to quantize, and tokenizing a whole text takes seconds on 2 cores.
_TOKENIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_text_name(name: str, source: str) -> None:
    names = OFFLINE_TEXTS if source == "offline" else HUB_TEXTS
    if name not in names:
        raise LlmqError(f"unknown perplexity text {name!r} for data={source!r}; choose from {', '.join(names)}"
                        + (" (wikitext2 and c4 need the hub: use --data hub)" if name in HUB_TEXTS else ""))


def _offline_text(name: str, split: str) -> str:
    folder = asset_path(name)
    if name == "ptb":  # one sentence a line; the seed repo joins ptb_text_only's sentences with a space
        return " ".join(Path(folder, f"{split}.txt").read_text().splitlines())
    return Path(folder, f"{split}.txt").read_text()


def _hub_text(name: str, split: str) -> str:
    from datasets import load_dataset

    if name == "wikitext2":
        return "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
    if name == "ptb":
        return " ".join(load_dataset("ptb_text_only", "penn_treebank", split=split)["sentence"])
    raise LlmqError(f"{name!r} from the hub serves only as an evaluation text here (256 windows of its validation "
                    "shard); calibrate on wikitext2 or ptb")


def _c4_validation() -> list[str]:
    from datasets import load_dataset

    return load_dataset("allenai/c4", data_files={"validation": C4_VALIDATION_SHARD}, split="validation")["text"]


def tokenized_text(name: str, split: str, tokenizer: PreTrainedTokenizerBase, source: str) -> torch.Tensor:
    """The token ids (N,) of a whole text split (not to be changed in place: they are kept for the next call)."""
    cache = _TOKENIZED.setdefault(tokenizer, {})
    if (name, split, source) not in cache:
        text = _offline_text(name, split) if source == "offline" else _hub_text(name, split)
        cache[name, split, source] = tokenizer(text, return_tensors="pt").input_ids[0]
    return cache[name, split, source]


def eval_tokens(name: str, tokenizer: PreTrainedTokenizerBase, source: str = "offline",
                seqlen: int = 2048, seed: int = 0) -> torch.Tensor:
    """The token ids (1, N) of a perplexity text's test split."""
    check_text_name(name, source)
    if source == "offline":
        return tokenized_text(name, "test", tokenizer, source).unsqueeze(0)
    if name == "c4":  # as in the seed repo: 256 random windows of documents longer than seqlen
        documents, rng, windows = _c4_validation(), random.Random(seed), []
        while len(windows) < 256:
            ids = tokenizer(documents[rng.randint(0, len(documents) - 1)], return_tensors="pt").input_ids
            if ids.shape[1] > seqlen:
                start = rng.randint(0, ids.shape[1] - seqlen - 1)
                windows.append(ids[:, start:start + seqlen])
        return torch.cat(windows, dim=1)
    return tokenized_text(name, "test", tokenizer, source).unsqueeze(0)


def calibration_windows(name: str, tokenizer: PreTrainedTokenizerBase, nsamples: int, seqlen: int,
                        source: str = "offline", seed: int = 0) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens from a text's training split, as (nsamples, seqlen)."""
    check_text_name(name, source)
    ids = tokenized_text(name, "train", tokenizer, source)
    if ids.numel() <= seqlen:
        raise LlmqError(f"the calibration text {name!r} has {ids.numel()} tokens, fewer than seqlen={seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[s:s + seqlen] for s in starts])
