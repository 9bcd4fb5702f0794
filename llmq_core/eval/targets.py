"""What a configuration is scored on: each kind of target registers how it is scored and what of the configuration
goes into its records' key.

    perplexity   a text (wikitext2, c4, ptb offline stand-ins or the hub's), in windows of `seqlen` tokens
    zeroshot     one of the five lm-eval tasks
    mmlu         5-shot MMLU, by category

`target_kind(name)` finds a target's kind: the first registered kind that claims the name. A new kind is one
decorated function here (or in a module imported here), with the `RunConfig` field that limits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.data import eval_tokens
from llmq_core.eval.mmlu import evaluate_mmlu
from llmq_core.eval.perplexity import perplexity
from llmq_core.eval.tasks import TASKS
from llmq_core.eval.zeroshot import evaluate_task


class EvaluationSettings(Protocol):
    """What a target reads of the configuration (config.RunConfig has all of it)."""

    data: str
    seqlen: int
    seed: int
    batch_size: int
    limit: int | None
    mmlu_limit: int | None
    ppl_windows: int | None


ScoreFn = Callable[[PreTrainedModel, PreTrainedTokenizerBase, str, EvaluationSettings, "Path | None"], dict]


@dataclass(frozen=True)
class TargetKind:
    name: str  # the records' "kind"
    claims: Callable[[str], bool]  # whether a target name is of this kind
    limit: str  # the configuration field that bounds it (None there: everything)
    on_texts: bool  # its key holds the data source and seqlen; a task's holds data "tasks" and no seqlen
    checkpointed: bool  # lm-eval's answers are saved as they come, so that a cut run resumes (`answers` below)
    score: ScoreFn  # (model, tokenizer, target, settings, answers file or None) -> metrics, with "n"


TARGET_KINDS: dict[str, TargetKind] = {}


def register_target(name: str, *, claims: Callable[[str], bool], limit: str, on_texts: bool = False,
                    checkpointed: bool = False) -> Callable[[ScoreFn], ScoreFn]:
    def register(score: ScoreFn) -> ScoreFn:
        if name in TARGET_KINDS:
            raise ValueError(f"target kind {name!r} is registered twice")
        TARGET_KINDS[name] = TargetKind(name, claims, limit, on_texts, checkpointed, score)
        return score
    return register


def target_kind(target: str) -> TargetKind:
    return next(kind for kind in TARGET_KINDS.values() if kind.claims(target))


@register_target("zeroshot", claims=lambda target: target in TASKS, limit="limit", checkpointed=True)
def score_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: str,
               settings: EvaluationSettings, answers: Path | None) -> dict:
    return evaluate_task(model, tokenizer, target, settings.limit, settings.batch_size, answers)


@register_target("mmlu", claims=lambda target: target == "mmlu", limit="mmlu_limit", checkpointed=True)
def score_mmlu(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: str,
               settings: EvaluationSettings, answers: Path | None) -> dict:
    return evaluate_mmlu(model, tokenizer, settings.mmlu_limit, settings.batch_size, answers)


# last: any other name is a text (RunConfig.validate checks it against the data source's texts)
@register_target("perplexity", claims=lambda target: True, limit="ppl_windows", on_texts=True)
def score_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: str,
                     settings: EvaluationSettings, answers: Path | None) -> dict:
    tokens = eval_tokens(target, tokenizer, settings.data, settings.seqlen, settings.seed)
    windows = tokens.shape[1] // settings.seqlen
    ppl = perplexity(model, tokens, settings.seqlen, settings.ppl_windows, progress=False)
    return {"ppl": ppl, "n": min(windows, settings.ppl_windows or windows)}
