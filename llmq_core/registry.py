"""The method registry: a method is one decorated function that the sweep finds by name.

    @register_method("rtn", wbits=range(1, 9), notebook="ptq/rtn.ipynb", paper_name="RTN")
    def quantize_rtn(model, spec, calibration): ...

`quantize(model, spec, calibration)` changes `model` in place and returns a small dict of
facts about what it did (e.g. the average bits per weight), which is stored with the results.

A LoRA-FT method (track="lora_ft") registers the same way a function that builds its model instead:
`prepare(model_name, spec, device, dtype) -> (model, tokenizer, report)`, the quantized base with its
adapters, which `lora.pipeline.prepare_and_finetune` then fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from llmq_core.errors import LlmqError


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize to. group_size=None means one scale per output channel."""

    wbits: float = 16
    abits: int = 16
    group_size: int | None = None
    symmetric: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # method-specific knobs


QuantizeFn = Callable[[torch.nn.Module, QuantSpec, "torch.Tensor | None"], dict]
PrepareFn = Callable[[str, QuantSpec, str, torch.dtype], tuple]  # the LoRA-FT track's


@dataclass(frozen=True)
class Method:
    name: str
    quantize: QuantizeFn | PrepareFn  # PrepareFn where track == "lora_ft"
    wbits: tuple[float, ...]
    abits: tuple[int, ...]
    notebook: str  # relative to notebooks/
    needs_calibration: bool
    summary: str
    paper_name: str  # how the paper's tables spell it
    options: dict[str, Any] = field(default_factory=dict)  # the method's knobs and their defaults
    grouped: bool = True  # whether it supports a group size (False: one scale per output channel only)
    always_symmetric: bool = False  # its quantizers are symmetric by construction (the `symmetric` flag is set)
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # the allowed values of an option, where few
    track: str = "ptq"  # "ptq" (post-training quantization) or "lora_ft" (quantized base + LoRA fine-tuning)
    # it quantizes a model held in CPU memory (larger than the GPU): one block at a time on the GPU, or per weight
    offloads: bool = False


METHODS: dict[str, Method] = {}


def register_method(name: str, *, wbits: Iterable[float], notebook: str, paper_name: str, abits: Iterable[int] = (16,),
                    needs_calibration: bool = False, summary: str = "", options: dict[str, Any] | None = None,
                    grouped: bool = True, always_symmetric: bool = False,
                    choices: dict[str, tuple[Any, ...]] | None = None, track: str = "ptq", offloads: bool = False
                    ) -> Callable[[QuantizeFn], QuantizeFn]:
    def register(fn: QuantizeFn) -> QuantizeFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name, fn, tuple(wbits), tuple(abits), notebook, needs_calibration,
                               summary or (fn.__doc__ or "").strip().split("\n")[0], paper_name, dict(options or {}), grouped,
                               always_symmetric, dict(choices or {}), track, offloads)
        return fn
    return register


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise LlmqError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))} (see `python run_all.py --list`)")
    return METHODS[name]


def check_spec(method: Method, spec: QuantSpec) -> None:
    """A clear error for bits or group sizes the method does not support."""
    if spec.wbits not in method.wbits:
        raise LlmqError(f"{method.name} does not support wbits={spec.wbits:g}; it supports "
                        f"{', '.join(f'{b:g}' for b in method.wbits)}")
    if spec.abits not in method.abits and 16 not in method.abits:
        raise LlmqError(f"{method.name} quantizes activations as well as weights: give abits (one of "
                        f"{', '.join(map(str, method.abits))}), e.g. --abits 8 or abits=8")
    if spec.abits not in method.abits:
        raise LlmqError(f"{method.name} does not support abits={spec.abits}; it supports "
                        f"{', '.join(map(str, method.abits))}")
    unknown = set(spec.options) - set(method.options)
    if unknown:
        raise LlmqError(f"{method.name} has no option {', '.join(sorted(unknown))}; its options are "
                        f"{', '.join(f'{k}={v!r}' for k, v in method.options.items()) or 'none'}")
    for name, allowed in method.choices.items():
        if name in spec.options and spec.options[name] not in allowed:
            raise LlmqError(f"{method.name}'s {name} is one of {', '.join(map(repr, allowed))}, "
                            f"not {spec.options[name]!r}")
    if spec.group_size is not None and not method.grouped:
        raise LlmqError(f"{method.name} quantizes with one scale per output channel only (as in the paper's "
                        f"table); leave group_size out or give 'channel', not {spec.group_size!r}")
    if spec.group_size is not None and (not isinstance(spec.group_size, int) or spec.group_size < 1):
        raise LlmqError(f"group_size must be a positive integer or 'channel' (one scale per output row), "
                        f"not {spec.group_size!r}")
