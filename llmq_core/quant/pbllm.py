"""PB-LLM (Shang et al., 2023): partially binarized weights, with GPTQ's error feedback.

Binarizing every weight of an LLM destroys it; keeping a small fraction r of *salient* weights at 8 bits and
binarizing the rest does not. Per group of 128 input columns:

1. Salient weights: the fraction r of the group's weights with the largest saliency, element by element (not
   whole columns, as BiLLM). The paper's criterion is the OBS one, w^2 / [U]_jj^2 with U the upper Cholesky
   factor of H^-1 (the error the layer takes when w is removed); `salient_metric="magnitude"` uses |w|.
2. The salient weights are rounded to 8 bits (per row, asymmetric min-max, the reference's high quantizer);
   every other weight is binarized per row: w ~ mu + alpha * sign(w - mu), with mu and alpha the mean and the
   mean |w - mu| of the row's non-salient weights in the group (2 values per row and group).
3. GPTQ: the columns are rounded left to right and each one's error is pushed onto the columns after it,
   W[:, j:] -= (w_j - q_j) / U_jj * U[j, j:], with lazy updates between groups.

Average bits, the paper's way: r * 8 + (1 - r) * 1. 1.7 bits is r = 10 % (the paper's setting); 2 bits is
r = 1/7 = 14.3 %. The paper leaves out the map of which weights are salient (a bit per weight, or a sparse index);
so do we, and the report states it beside the average.

Where ours differs from the reference (hahnyuan/PB-LLM, `gptq_pb`, `xnor --salient_metric hessian`): the salient
mask, mu and alpha of a group are chosen when the group is reached, from the weights as the error feedback has
left them (as GPTQ takes its group scales); the reference fixes them up front from the original weights. Our mu
and alpha average the non-salient weights only; the reference averages over the whole group with the salient
weights counted as zeros. `reference_constants=True` does both the reference's way (finding 4d's experiment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel

from llmq_core.quant.column_loop import ColumnLoop
from llmq_core.quant.hessian import drop_dead_inputs, inverse_hessian_factor, quantize_block_by_block
from llmq_core.quant.primitives import fake_quantize, find_scale_zero
from llmq_core.registry import QuantSpec, register_method


def salient_fraction_for_bits(average_bits: float, high_bits: int = 8) -> float:
    """r with r * high_bits + (1 - r) * 1 = average_bits: 0.1 for 1.7 bits, 1/7 for 2 bits."""
    return (average_bits - 1) / (high_bits - 1)


def salient_weight_mask(weight: torch.Tensor, diagonal: torch.Tensor, fraction: float,
                        metric: str = "hessian") -> torch.Tensor:
    """True for the `fraction` of the weights with the largest saliency: w^2 / diagonal^2 (per column) or |w|."""
    saliency = weight.abs() if metric == "magnitude" else weight ** 2 / diagonal.unsqueeze(0) ** 2
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    count = round(fraction * weight.numel())
    if count:
        mask[torch.topk(saliency.flatten(), count).indices] = True
    return mask.view_as(weight)


def pbllm_columns(block: torch.Tensor, inverse_block: torch.Tensor, salient: torch.Tensor, mean: torch.Tensor,
                  scale: torch.Tensor, high_scale: torch.Tensor, high_zero: torch.Tensor, high_bits: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """PB-LLM inside one group of columns, updating `block` in place: a salient weight is rounded to `high_bits`,
    any other binarized to mean +- scale; the error, divided by U_jj, goes onto the group's later columns along
    row j of U (GPTQ's feedback). Returns the quantized columns and the scaled errors."""
    quantized, errors = torch.empty_like(block), torch.empty_like(block)
    for i in range(block.shape[1]):
        w = block[:, i]
        high = fake_quantize(w.unsqueeze(1), high_scale, high_zero, high_bits).flatten()
        q = torch.where(salient[:, i], high, torch.where(w >= mean, mean + scale, mean - scale))
        quantized[:, i] = q
        error = (w - q) / inverse_block[i, i]
        block[:, i:] -= error.unsqueeze(1) @ inverse_block[i, i:].unsqueeze(0)
        errors[:, i] = error
    return quantized, errors


@torch.no_grad()
def pbllm_quantize_linear(linear: torch.nn.Linear, hessian: torch.Tensor, salient_fraction: float,
                          group_size: int | None = 128, high_bits: int = 8, salient_metric: str = "hessian",
                          percdamp: float = 0.01, reference_constants: bool = False, cuda_graph: bool = True) -> int:
    """Replace `linear.weight` by its partially binarized copy; returns the number of salient weights.
    group_size None: one group per row. A last group narrower than group_size (576 = 4 x 128 + 64) is fine.
    `reference_constants`: each group's salient mask, mean and scale as hahnyuan/PB-LLM's gptq_pb sets them, up front
    from the original weights and over the whole group with the salient weights as zeros (see the module's note).
    On a GPU each group's column loop replays a CUDA graph, as GPTQ's does (`cuda_graph=False`: the eager loop)."""
    weight, hessian = drop_dead_inputs(linear.weight.data, hessian)
    rows, cols = weight.shape
    group = cols if group_size is None else group_size
    high_scale, high_zero = find_scale_zero(weight, high_bits)  # per row, from the weights before any update
    upper = inverse_hessian_factor(hessian, percdamp)

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pbllm_columns(*inputs, high_bits)

    def group_constants(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The salient mask, mean and scale of the group's binarization, from the weights as they are now."""
        block = weight[:, start:stop]
        salient = salient_weight_mask(block, torch.diagonal(upper[start:stop, start:stop]), salient_fraction,
                                      salient_metric)
        binary = ~salient
        if reference_constants:  # over the whole group, the salient weights counted as zeros
            masked = block * binary
            mean = masked.mean(1)
            return salient, mean, (masked - mean.unsqueeze(1)).abs().mean(1)
        count = binary.sum(1).clamp(min=1)
        mean = (block * binary).sum(1) / count
        return salient, mean, ((block - mean.unsqueeze(1)).abs() * binary).sum(1) / count

    starts = range(0, cols, group)
    # the reference fixes every group's constants up front, from the original weights
    fixed = [group_constants(start, min(start + group, cols)) for start in starts] if reference_constants else None
    columns = ColumnLoop(run, cuda_graph)
    quantized = torch.zeros_like(weight)
    salient_count = 0
    for index, start in enumerate(starts):
        stop = min(start + group, cols)
        salient, mean, scale = fixed[index] if fixed else group_constants(start, stop)
        block = weight[:, start:stop].clone()
        inputs = [block, upper[start:stop, start:stop], salient, mean, scale, high_scale, high_zero]
        quantized[:, start:stop], errors = columns(*inputs)
        weight[:, stop:] -= errors @ upper[start:stop, stop:]
        salient_count += int(salient.sum())
    linear.weight.data = quantized.to(linear.weight.dtype)
    return salient_count


@dataclass(frozen=True)
class PBLLMOptions:
    high_bits: int = 8  # the salient weights' grid
    salient_metric: Literal["hessian", "magnitude"] = "hessian"  # w^2 / [H^-1]_jj^2, or |w|
    percdamp: float = 0.01  # the dampening of H, a fraction of mean(diag H)
    reference_constants: bool = False  # each group's mask, mean and scale fixed up front, the reference's way


@register_method("pbllm", wbits=(1.7, 2), notebook="ptq/pbllm.ipynb", paper_name="PB-LLM", needs_calibration=True,
                 options=PBLLMOptions,
                 summary="8-bit salient weights, the rest binarized, with GPTQ's error feedback", offloads=True)
@torch.no_grad()
def quantize_pbllm(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """Block by block, as GPTQ; wbits sets the salient fraction by the paper's accounting."""
    options = PBLLMOptions(**spec.options)
    fraction = salient_fraction_for_bits(spec.wbits, options.high_bits)
    weights, salient, linears = 0, 0, 0

    def quantize_linear(name: str, linear: torch.nn.Linear, hessian: torch.Tensor) -> None:
        nonlocal weights, salient, linears
        salient += pbllm_quantize_linear(linear, hessian, fraction, spec.group_size, options.high_bits,
                                         options.salient_metric, options.percdamp, options.reference_constants)
        weights, linears = weights + linear.weight.numel(), linears + 1

    quantize_block_by_block(model, calibration, quantize_linear, "PB-LLM blocks")
    measured = salient / weights
    return {"avg_bits": measured * options.high_bits + (1 - measured), "salient_fraction": measured,
            "bitmap_bits_not_counted": 1.0, "quantized_linears": linears}
