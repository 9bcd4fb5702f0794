"""QLoRA (Dettmers et al., 2023): a frozen NormalFloat base, and LoRA adapters trained in 16 bits.

    y = NF-dequant(W) x + (alpha / r) · B A x,     A: r x d_in,  B: d_out x r,  B = 0 at the start

Only A and B are trained; the gradient flows through the dequantized frozen base. At 4 bits the
base is bitsandbytes' NF4 with double quantization, loaded through transformers'
`BitsAndBytesConfig`, exactly as QLoRA does. bitsandbytes has no NF3 or NF2, so at 3 and 2 bits
the base keeps its NF-k *dequantized* values in ordinary Linear layers (`normalfloat.py`): the
same numbers a packed NF-k kernel would compute with, without its memory saving.
The adapters are peft's LoRA on every linear layer of the blocks, with QLoRA's r = 64, alpha = 16,
dropout 0.05. The NormalFloat row of the paper's table is this method with steps = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.lora.instructions import INSTRUCTION_SOURCES
from llmq_core.lora.normalfloat import normalfloat_roundtrip
from llmq_core.models import decoder_linears, load_model
from llmq_core.registry import QuantSpec, register_method

# The fine-tuning knobs of both LoRA-FT methods and their full-size defaults: QLoRA's recipe for 7B/13B
# (r 64, alpha 16, dropout 0.05, lr 2e-4, batch 16, prompts cut to 384 and responses to 128 tokens),
# 1000 steps. The study fine-tunes on Alpaca; offline the data is ShareGPT's first exchanges.
@dataclass(frozen=True)
class FinetuneOptions:
    steps: int = 1000
    lr: float = 2e-4
    rank: int = 64
    alpha: float = 16
    dropout: float = 0.05
    train_batch_size: int = 16
    source_max_len: int = 384  # prompts cut to this many tokens
    target_max_len: int = 128  # responses cut to this many tokens
    instructions: Literal[INSTRUCTION_SOURCES] = "sharegpt"


def lora_ft_counterparts(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The options of the rows a LoRA-FT row is read against: the NormalFloat base (no step, named with the same
    instruction set, as the sweeps do) and QLoRA with the same fine-tune (the options less IR-QLoRA's own)."""
    base = {"steps": 0, **({"instructions": options["instructions"]} if "instructions" in options else {})}
    finetune_names = {field.name for field in fields(FinetuneOptions)}
    finetune = {k: v for k, v in options.items() if k in finetune_names}
    return {"NormalFloat": base, "QLoRA": finetune}


@dataclass
class LoraSettings:
    """The QLoRA paper's adapter hyper-parameters (7B/13B); IR-QLoRA's scripts leave dropout at 0."""

    rank: int = 64
    alpha: float = 16
    dropout: float = 0.05


def load_normalfloat_model(name: str, bits: int, device: str, dtype: torch.dtype
                           ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model with every linear layer of its blocks in NF-`bits` (NF4: bitsandbytes'; NF3/NF2: ours)."""
    if bits != 4:
        model, tokenizer = load_model(name, device, dtype)
        with torch.no_grad():
            for linear in decoder_linears(model).values():
                linear.weight.copy_(normalfloat_roundtrip(linear.weight, bits))
        return model, tokenizer
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    return load_model(name, device, dtype, quantization_config=config)


def attach_lora(model: PreTrainedModel, settings: LoraSettings) -> PreTrainedModel:
    """peft's LoRA on every linear layer of the blocks (QLoRA's choice: all of them, not only q and v)."""
    from peft import LoraConfig, get_peft_model

    targets = sorted({name.rsplit(".", 1)[-1] for name in decoder_linears(model)})
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config).eval()  # peft leaves it training (dropout on); finetune() trains it


def count_trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_settings(options: FinetuneOptions) -> LoraSettings:
    return LoraSettings(rank=options.rank, alpha=options.alpha, dropout=options.dropout)


@register_method("qlora", wbits=(4, 3, 2), notebook="lora_ft/qlora.ipynb", paper_name="QLoRA", track="lora_ft",
                 grouped=False, options=FinetuneOptions,
                 summary="NormalFloat base + LoRA fine-tuned on instructions (steps=0: the NormalFloat row)")
def prepare_qlora(model_name: str, spec: QuantSpec, device: str, dtype: torch.dtype
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """The NF-k base with fresh LoRA adapters, ready to fine-tune (lora.pipeline.prepare_and_finetune)."""
    options = FinetuneOptions(**spec.options)
    model, tokenizer = load_normalfloat_model(model_name, spec.grid_bits, device, dtype)
    model = attach_lora(model, lora_settings(options))
    return model, tokenizer, {"trainable_parameters": count_trainable_parameters(model)}
