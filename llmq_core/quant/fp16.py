"""The unquantized baseline: the model as loaded (bf16 weights, computed in the run's dtype)."""

from __future__ import annotations

import torch

from llmq_core.registry import QuantSpec, register_method


@register_method("fp16", wbits=(16,), notebook="ptq/fp16.ipynb", paper_name="FP16",
                 summary="unquantized baseline (the paper's FP16 row)", offloads=True)
def keep_full_precision(model: torch.nn.Module, spec: QuantSpec, calibration: torch.Tensor | None) -> dict:
    return {"avg_bits": 16.0}
