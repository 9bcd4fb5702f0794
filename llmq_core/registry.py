"""The method registry: a method is one decorated function that the sweep finds by name.

    @register_method("rtn", wbits=range(1, 9), notebook="ptq/rtn.ipynb", paper_name="RTN")
    def quantize_rtn(model, spec, calibration): ...

A method's knobs are a frozen dataclass beside it (`options=GPTQOptions`): its fields and their defaults. A
configuration gives some of them by name (`spec.options`, the dict that goes into the records' key);
`check_spec` refuses an unknown name, a value of the wrong type, or one outside a `Literal` field's values, and the
method reads them all, defaults filled in, as `GPTQOptions(**spec.options)`.

`quantize(model, spec, calibration)` changes `model` in place and returns a small dict of
facts about what it did (e.g. the average bits per weight), which is stored with the results.

A LoRA-FT method (track="lora_ft") registers the same way a function that builds its model instead:
`prepare(model_name, spec, device, dtype) -> (model, tokenizer, report)`, the quantized base with its
adapters, which `lora.pipeline.prepare_and_finetune` then fine-tunes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal, get_args, get_origin, get_type_hints

import torch

from llmq_core.errors import LlmqError


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize to. group_size=None means one scale per output channel."""

    wbits: float = 16
    abits: int = 16
    group_size: int | None = None
    symmetric: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # method-specific knobs, as given (defaults left out)

    @property
    def grid_bits(self) -> int:
        """The width of an integer quantization grid: wbits where it is a whole number of bits. (PB-LLM's and
        BiLLM's wbits are averages over a mix of grids, and those methods never read this.)"""
        if not float(self.wbits).is_integer():
            raise LlmqError(f"wbits={self.wbits:g} is an average over several grids, not one grid's width")
        return int(self.wbits)


@dataclass(frozen=True)
class NoOptions:
    """A method without knobs."""


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
    options: type = NoOptions  # a frozen dataclass: the method's knobs and their defaults
    grouped: bool = True  # whether it supports a group size (False: one scale per output channel only)
    always_symmetric: bool = False  # its quantizers are symmetric by construction (the `symmetric` flag is set)
    track: str = "ptq"  # "ptq" (post-training quantization) or "lora_ft" (quantized base + LoRA fine-tuning)
    # it quantizes a model held in CPU memory (larger than the GPU): one block at a time on the GPU, or per weight
    offloads: bool = False

    def option_defaults(self) -> dict[str, Any]:
        return asdict(self.options())


METHODS: dict[str, Method] = {}


def register_method(name: str, *, wbits: Iterable[float], notebook: str, paper_name: str, abits: Iterable[int] = (16,),
                    needs_calibration: bool = False, summary: str = "", options: type = NoOptions,
                    grouped: bool = True, always_symmetric: bool = False, track: str = "ptq", offloads: bool = False
                    ) -> Callable[[QuantizeFn], QuantizeFn]:
    def register(fn: QuantizeFn) -> QuantizeFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name, fn, tuple(wbits), tuple(abits), notebook, needs_calibration,
                               summary or (fn.__doc__ or "").strip().split("\n")[0], paper_name, options, grouped,
                               always_symmetric, track, offloads)
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
    check_options(method, spec.options)
    if spec.group_size is not None and not method.grouped:
        raise LlmqError(f"{method.name} quantizes with one scale per output channel only (as in the paper's "
                        f"table); leave group_size out or give 'channel', not {spec.group_size!r}")
    if spec.group_size is not None and (not isinstance(spec.group_size, int) or spec.group_size < 1):
        raise LlmqError(f"group_size must be a positive integer or 'channel' (one scale per output row), "
                        f"not {spec.group_size!r}")


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_options(method: Method, given: dict[str, Any]) -> None:
    """A clear error for an option the method does not have, or a value its field's type does not allow."""
    types = get_type_hints(method.options)
    unknown = set(given) - set(types)
    if unknown:
        raise LlmqError(f"{method.name} has no option {', '.join(sorted(unknown))}; its options are "
                        f"{', '.join(f'{k}={v!r}' for k, v in method.option_defaults().items()) or 'none'}")
    for name, value in given.items():
        allowed = types[name]
        if get_origin(allowed) is Literal:
            if value not in get_args(allowed):
                raise LlmqError(f"{method.name}'s {name} is one of {', '.join(map(repr, get_args(allowed)))}, "
                                f"not {value!r}")
            continue
        # bool is an int to Python, not to a configuration; an integer is a number
        fits = isinstance(value, bool) if allowed is bool else (
            not isinstance(value, bool) and isinstance(value, (int, float) if allowed is float else allowed))
        if not fits:
            raise LlmqError(f"{method.name}'s {name} is {TYPE_NAMES.get(allowed, allowed)}, not {value!r}")
