"""RTN: round-to-nearest, the data-free baseline of every quantization paper.

Each Linear weight W inside the decoder blocks is replaced by its fake-quantized copy,
one (scale, zero) pair per output row or per group of `group_size` input columns.
"""

from __future__ import annotations

import torch

from llmq_core.models import decoder_linears
from llmq_core.quant.primitives import quantize_weight_groupwise
from llmq_core.quant.registry import QuantSpec, register_method


def average_bits(bits: int, group_size: int | None, in_features: int) -> float:
    """Bits per weight including the fp16 scale and the b-bit zero stored for each group."""
    groups_per_row = 1 if group_size is None else -(-in_features // group_size)
    return bits + groups_per_row * (16 + bits) / in_features


def model_average_bits(linears: list[torch.nn.Linear], bits: int, group_size: int | None) -> float:
    """`average_bits` over the Linears, weighted by their number of weights."""
    count = sum(linear.weight.numel() for linear in linears)
    return sum(average_bits(bits, group_size, l.in_features) * l.weight.numel() for l in linears) / count


@register_method("rtn", wbits=range(1, 9), notebook="ptq/rtn.ipynb", paper_name="RTN",
                 summary="round-to-nearest, per channel or per group", offloads=True)
@torch.no_grad()
def quantize_rtn(model: torch.nn.Module, spec: QuantSpec, calibration: torch.Tensor | None) -> dict:
    linears = list(decoder_linears(model).values())
    for linear in linears:
        linear.weight.copy_(quantize_weight_groupwise(linear.weight, int(spec.wbits), spec.group_size, spec.symmetric))
    return {"avg_bits": model_average_bits(linears, int(spec.wbits), spec.group_size), "quantized_linears": len(linears)}
