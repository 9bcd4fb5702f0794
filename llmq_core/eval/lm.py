"""lm-eval's HuggingFace model (HFLM), scoring only the positions that hold continuation tokens.

HFLM takes log_softmax over the whole vocabulary at every position of every padded input, and
then reads a few positions of each row, with several device round trips per request. On a
5-shot MMLU batch of 32 x 2048 tokens that is 13 GB of fp32 log-probabilities (about 30 GB at
peak), and on a GPU the per-request round trips, not the model, set the pace.

`ContinuationHFLM` keeps everything lm-eval decides: the requests and their tokens, the order,
the batches, the one-token-continuation cache (MMLU's four answer letters share one forward
pass) and the (log-likelihood, is-greedy) answers. It changes how a batch is scored: the decoder
runs on the padded batch, its last hidden states are gathered at the positions that predict
continuation tokens, and only those go through the LM head (a 5-shot MMLU batch of 64 with
Gemma-3's 262k vocabulary would otherwise need 35 GB of fp32 logits); log_softmax runs over those,
and every request's sum and greedy match are gathered at once, with one copy back to the host per batch. It also tokenizes every request's
strings up front, in batches (the fast tokenizer's own threads) and each distinct string once:
HFLM encodes them one call at a time, and MMLU's 56k requests share 14k contexts.
tests/test_zeroshot.py checks that its tokens and answers equal HFLM's.

With `answers_file`, the answers so far are saved every 30 s (`AnswerCheckpoint`), and a run of the
same model that finds the file scores only the requests it lacks: a task cut short by a time limit
(a batch job's time limit, a cluster's preemption) resumes instead of starting again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lm_eval.api.model import CacheHook, hash_args
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator, _add_special_kwargs, has_bos_prefix
from tqdm import tqdm

from llmq_core.models import head_logits

Request = tuple[tuple[str, str], list[int], list[int]]  # (strings, context tokens, continuation tokens)
CHECKPOINT_INTERVAL_S = 30.0  # how often saved answers are rewritten: MMLU's 56k answers are a 5 MB file


def encoded_strings(context: str, continuation: str) -> tuple[str, str]:
    """The two strings lm-eval's `_encode_pair` tokenizes for a causal model: the context with its trailing
    spaces moved to the continuation, and the whole."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    return context, context + continuation


class AnswerCheckpoint(CacheHook):
    """The (log-likelihood, is-greedy) answers scored so far, by lm-eval's hash of each request, in a JSON file.

    HFLM hands every answer to its cache hook (`add_partial`) as it is scored; this hook keeps them and
    rewrites the file atomically at most every `interval_s`, so a killed run loses at most that much work."""

    def __init__(self, path: Path, interval_s: float | None = None) -> None:
        super().__init__(None)
        self.path, self.saved_at = Path(path), time.monotonic()
        self.interval_s = CHECKPOINT_INTERVAL_S if interval_s is None else interval_s
        self.answers: dict[str, list] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, request_args: tuple) -> tuple[float, bool] | None:
        answer = self.answers.get(hash_args("loglikelihood", request_args))
        return None if answer is None else (answer[0], answer[1])

    def add_partial(self, attr: str, req: tuple, res: tuple[float, bool]) -> None:
        self.answers[hash_args(attr, req)] = [float(res[0]), bool(res[1])]
        if time.monotonic() - self.saved_at >= self.interval_s:
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(self.answers))
        os.replace(partial, self.path)  # a reader never sees half a file
        self.saved_at = time.monotonic()


def saved_answer_count(path: Path) -> int:
    return len(AnswerCheckpoint(path).answers)


class ContinuationHFLM(HFLM):
    """HFLM whose log-likelihoods come from the continuation positions alone (decoder-only models); with
    `answers_file`, it resumes from the answers a cut run of the same model saved there."""

    _encoded: dict[str, np.ndarray] = {}  # tokenized ahead by loglikelihood(), read by tok_encode()

    def __init__(self, *args, answers_file: Path | str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.answers_file = answers_file

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """HFLM's answers to the requests the checkpoint lacks, after tokenizing what its `_encode_pair` will ask
        for in batches (a string this misses, another lm-eval's pairing, is encoded by HFLM as before)."""
        checkpoint = AnswerCheckpoint(self.answers_file) if self.answers_file else None
        known = [checkpoint.get(request.args) for request in requests] if checkpoint else [None] * len(requests)
        todo = [request for request, answer in zip(requests, known) if answer is None]
        strings = {text for request in todo if request.args[0] for text in encoded_strings(*request.args)}
        self._encoded = self._batch_encode(sorted(strings))
        hook = self.cache_hook
        if checkpoint:
            self.set_cache_hook(checkpoint)
        try:
            scored = iter(super().loglikelihood(todo, disable_tqdm) if todo else [])
        finally:
            self._encoded = {}
            self.set_cache_hook(hook)
            if checkpoint:
                checkpoint.save()
        return [answer if answer is not None else next(scored) for answer in known]

    def _batch_encode(self, strings: list[str], chunk: int = 2048) -> dict[str, np.ndarray]:
        """Each string's token ids with the special tokens HFLM's tok_encode would give it (none after a BOS)."""
        bos = self.tokenizer.decode(self.prefix_token_id)
        default = _add_special_kwargs(None, self.add_bos_token)
        groups: dict[bool, list[str]] = {True: [], False: []}
        for text in strings:
            groups[has_bos_prefix(text, bos)].append(text)
        encoded = {}
        for starts_with_bos, group in groups.items():
            kwargs = {**default, "add_special_tokens": False} if starts_with_bos else default
            for start in range(0, len(group), chunk):  # int32 arrays: lists of Python ints would take GBs
                ids = self.tokenizer(group[start:start + chunk], **kwargs)["input_ids"]
                encoded.update(zip(group[start:start + chunk], (np.array(i, dtype=np.int32) for i in ids)))
        return encoded

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        if add_special_tokens is None and not left_truncate_len and not kwargs and string in self._encoded:
            return self._encoded[string].tolist()
        return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        if self.backend != "causal" or self.batch_size == "auto" or override_bs is not None:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        # HFLM's own ordering (longest first) and grouping (same context and continuation but its last token)
        ordered = Collator(requests, sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
                           group_by="contexts" if self.logits_cache else None,
                           group_fn=lambda req: req[-2] + req[-1][:-1])
        answers: list[tuple[float, bool]] = []
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="Running loglikelihood requests")
        for chunk in ordered.get_batched(n=self.batch_size):
            # the inputs as HFLM builds them: context + continuation, left-truncated, without its last token
            inputs = [(context + continuation)[-(self.max_length + 1):][:-1] for _, context, continuation in chunk]
            # each request this chunk answers: its row, strings and continuation (a cache hit adds the group's others)
            scored = [(row, strings, continuation)
                      for row, (strings, context, continuation) in enumerate(chunk)
                      for strings, continuation, _ in ordered.get_cache(strings, context, continuation,
                                                                        torch.empty(1, 1, 1))]
            for strings, answer in zip([s for _, s, _ in scored], self._score_batch(inputs, scored), strict=True):
                answers.append(answer)
                if strings is not None:
                    self.cache_hook.add_partial("loglikelihood", strings, answer)
                progress.update(1)
        progress.close()
        return ordered.get_original(answers)

    def _score_batch(self, inputs: list[list[int]], scored: list[tuple[int, tuple[str, str], list[int]]]
                     ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether each of its tokens is the argmax) per scored request."""
        lengths = [len(tokens) for tokens in inputs]
        batch = torch.zeros(len(inputs), max(lengths), dtype=torch.long)  # right-padded with 0, as HFLM pads
        for row, tokens in enumerate(inputs):
            batch[row, :len(tokens)] = torch.tensor(tokens)
        # The logits at position p predict token p + 1, so a continuation of n tokens at the end of an input of
        # length L is scored by positions L - n ... L - 1.
        rows, positions, tokens, owners = [], [], [], []
        for index, (row, _, continuation) in enumerate(scored):
            start = lengths[row] - len(continuation)
            rows += [row] * len(continuation)
            positions += range(start, start + len(continuation))
            tokens += continuation
            owners += [index] * len(continuation)
        rows, positions, tokens, owners = torch.tensor([rows, positions, tokens, owners]).to(self.device)
        logprobs = F.log_softmax(self._logits_at(batch.to(self.device), rows, positions), dim=-1,
                                 dtype=self.softmax_dtype)
        token_logprobs = logprobs.gather(1, tokens[:, None]).squeeze(1)
        misses = (logprobs.argmax(dim=-1) != tokens).to(token_logprobs.dtype)
        totals = torch.zeros(2, len(scored), dtype=token_logprobs.dtype, device=logprobs.device)
        totals[0].index_add_(0, owners, token_logprobs)
        totals[1].index_add_(0, owners, misses)
        sums, missed = totals.tolist()
        return [(total, miss == 0) for total, miss in zip(sums, missed, strict=True)]

    def _logits_at(self, batch: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The model's logits at the (row, position) pairs only: [pairs, vocab]."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            hidden = self.model.get_decoder()(input_ids=batch, use_cache=False).last_hidden_state
            return head_logits(self.model, hidden[rows, positions])
