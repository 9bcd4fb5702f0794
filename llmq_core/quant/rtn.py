"""RTN: round-to-nearest, the data-free baseline of every quantization paper.

Each Linear weight W inside the decoder blocks is replaced by its fake-quantized copy,
one (scale, zero) pair per output row or per group of `group_size` input columns.
"""

from __future__ import annotations

import torch

from llmq_core.models import decoder_linears
from llmq_core.quant.primitives import model_average_bits, quantize_weight_groupwise
from llmq_core.registry import QuantSpec, register_method


@register_method("rtn", wbits=range(1, 9), notebook="ptq/rtn.ipynb", paper_name="RTN",
                 summary="round-to-nearest, per channel or per group", offloads=True)
@torch.no_grad()
def quantize_rtn(model: torch.nn.Module, spec: QuantSpec, calibration: torch.Tensor | None) -> dict:
    linears = list(decoder_linears(model).values())
    for linear in linears:
        linear.weight.copy_(quantize_weight_groupwise(linear.weight, spec.grid_bits, spec.group_size, spec.symmetric))
    return {"avg_bits": model_average_bits(linears, spec.grid_bits, spec.group_size), "quantized_linears": len(linears)}
