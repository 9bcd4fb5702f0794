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


@register_method("rtn", wbits=range(1, 9), notebook="ptq/rtn.ipynb", paper_name="RTN",
                 summary="round-to-nearest, per channel or per group")
@torch.no_grad()
def quantize_rtn(model: torch.nn.Module, spec: QuantSpec, calibration: torch.Tensor | None) -> dict:
    bits, weighted_bits, count = int(spec.wbits), 0.0, 0
    for linear in decoder_linears(model).values():
        linear.weight.copy_(quantize_weight_groupwise(linear.weight, bits, spec.group_size, spec.symmetric))
        weighted_bits += average_bits(bits, spec.group_size, linear.in_features) * linear.weight.numel()
        count += linear.weight.numel()
    return {"avg_bits": weighted_bits / count, "quantized_linears": len(decoder_linears(model))}
