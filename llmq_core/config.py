"""One configuration of the study: what to quantize, how, and what to score it on.

`run_all.py` builds a `RunConfig` from a sweep's YAML and the command line and hands a notebook the value of each
parameter its parameters cell declares; the notebook reads them back, once, with `RunConfig.from_params`, into the
same configuration. `validate()` finds bad input before any compute; `record_key(target)` is the results-store key
of one number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from llmq_core.data import HUB_TEXTS, OFFLINE_TEXTS, check_text_name
from llmq_core.errors import LlmqError
from llmq_core.eval.targets import TARGET_KINDS, target_kind
from llmq_core.eval.tasks import TASKS, check_task_name
from llmq_core.methods import METHODS, QuantSpec, check_spec, get_method
from llmq_core.models import check_model_available, default_dtype
from llmq_core.results import ResultStore


def parse_group_size(value: Any) -> int | None:
    """128 -> 128; None, "channel" or "per-channel" -> None (one scale per output row)."""
    if value is None or (isinstance(value, str) and value.lower() in ("channel", "per-channel", "none")):
        return None
    try:
        group = int(value)
    except (TypeError, ValueError):
        group = 0
    if group < 1 or str(group) != str(value).strip():
        raise LlmqError(f"group size must be a positive integer, or 'channel' for one scale per output row; got {value!r}")
    return group


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    method: str = "fp16"
    wbits: float = 16
    abits: int = 16
    group_size: int | None = None
    symmetric: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    data: str = "offline"  # "offline" (asset cache) or "hub"
    datasets: list[str] | None = None  # perplexity texts; None = the data source's three
    tasks: list[str] | None = None  # zero-shot tasks and mmlu; None = the five (and mmlu for the LoRA-FT track)
    limit: int | None = None  # zero-shot: score the first `limit` documents of each task
    mmlu_limit: int | None = None  # MMLU: the first `mmlu_limit` questions of each of its 57 subjects
    ppl_windows: int | None = None  # perplexity: score the first `ppl_windows` windows
    seqlen: int = 2048
    seed: int = 0
    device: str = "cpu"
    # Calibration, for the methods that need it: `nsamples` random windows of `calib_seqlen` tokens
    # (default: seqlen) from the training split of `calibration` (default: the stand-in for WikiText2
    # offline, WikiText2 from the hub). The paper: 128 x 2048 from WikiText2.
    calibration: str | None = None
    nsamples: int = 128
    calib_seqlen: int | None = None
    batch_size: int = 16  # lm-eval batch size; changes the numbers only by floating-point rounding

    def __post_init__(self) -> None:
        self.group_size = parse_group_size(self.group_size)
        # 4 and 4.0 must give one record key: the CLI parses floats, YAML keeps ints; 1.7 stays 1.7.
        if isinstance(self.wbits, float) and self.wbits.is_integer():
            self.wbits = int(self.wbits)
        if self.datasets is None:
            self.datasets = list(OFFLINE_TEXTS if self.data == "offline" else HUB_TEXTS)
        if self.tasks is None:
            lora_ft = self.method in METHODS and METHODS[self.method].track == "lora_ft"
            self.tasks = [*TASKS, "mmlu"] if lora_ft else list(TASKS)
        if self.method == "fp16":
            self.wbits = 16
        if self.method in METHODS and METHODS[self.method].always_symmetric:
            self.symmetric = True
        if self.calibration is None:
            self.calibration = "enwiki-excerpt" if self.data == "offline" else "wikitext2"
        if self.calib_seqlen is None:
            self.calib_seqlen = self.seqlen

    @classmethod
    def from_params(cls, params: Mapping[str, Any], method: str) -> RunConfig:
        """The configuration of a notebook's parameters as papermill leaves them (the cell's defaults, then what
        run_all.py injected): the value of each name that is a field here; nothing else in `params` is read."""
        values = {f.name: params[f.name] for f in fields(cls) if f.name != "method" and f.name in params}
        if not isinstance(values.get("model", ""), str):
            raise LlmqError("model is no longer a model's name (a later cell bound it to the loaded model): run the "
                            "parameters cell again, then this one")
        return cls(method=method, **values)

    @property
    def needs_calibration(self) -> bool:
        return get_method(self.method).needs_calibration if self.method in METHODS else False

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.wbits, self.abits, self.group_size, self.symmetric, self.options)

    @property
    def dtype(self) -> torch.dtype:
        return default_dtype(self.device)

    def validate(self) -> None:
        """Raise LlmqError, with how to fix it, for anything that would fail later."""
        check_spec(get_method(self.method), self.spec)
        check_model_available(self.model)
        if self.data not in ("offline", "hub"):
            raise LlmqError(f"data must be 'offline' or 'hub', not {self.data!r}")
        for name in self.datasets:
            check_text_name(name, self.data)
        for task in self.tasks:
            check_task_name(task)
        for name in (kind.limit for kind in TARGET_KINDS.values()):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LlmqError(f"{name} must be a positive integer or left out (everything), not {value!r}")
        if not isinstance(self.seqlen, int) or self.seqlen < 16:
            raise LlmqError(f"seqlen must be an integer >= 16, not {self.seqlen!r}")
        if self.needs_calibration:
            check_text_name(self.calibration, self.data)
            for name in ("nsamples", "calib_seqlen"):
                if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                    raise LlmqError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise LlmqError(f"device {self.device!r} asked for, but torch sees no CUDA GPU; use --device cpu")

    def record_key(self, target: str) -> dict[str, Any]:
        """The results-store key of one number: this configuration scored on one text or task."""
        kind = target_kind(target)
        # Calibration belongs to the key only where it matters, so that RTN's keys stay as they were.
        calibration = ({"calibration": self.calibration, "nsamples": self.nsamples, "calib_seqlen": self.calib_seqlen}
                       if self.needs_calibration else {})
        return {
            "model": self.model, "method": self.method, "wbits": self.wbits, "abits": self.abits,
            "group_size": self.group_size, "symmetric": self.symmetric, "options": self.options,
            "data": self.data if kind.on_texts else "tasks", "target": target, "kind": kind.name,
            "limit": getattr(self, kind.limit), "seqlen": self.seqlen if kind.on_texts else None,
            "dtype": str(self.dtype).removeprefix("torch."), "seed": self.seed, **calibration,
        }

    def targets(self) -> list[str]:
        return [*self.datasets, *self.tasks]

    def pending(self, store: ResultStore) -> list[str]:
        return [t for t in self.targets() if store.get(self.record_key(t)) is None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
