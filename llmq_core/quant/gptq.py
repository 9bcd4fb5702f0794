"""GPTQ (Frantar et al., 2023): quantize a Linear column by column and push each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's loss.

For a Linear with weight W (rows x cols) and calibration inputs X (cols x tokens), the layer loss
||W X - Q X||^2 has Hessian H = 2 X X^T. Quantizing column j to q_j and updating the remaining columns

    W[:, j:] -= ((w_j - q_j) / [H^-1]_jj) [H^-1]_{j, j:}

is the optimal (OBS) compensation. GPTQ takes the Cholesky factor U of H^-1 (upper, H^-1 = U^T U), whose
rows give the same updates in a fixed column order, and applies them lazily: exactly inside a block of
columns, and to the columns after the block once per block, as one matrix product.

Where ours differs from the reference (IST-DASLab/gptq): H is averaged over tokens rather than
sequences (a constant factor, and the damping is relative to mean(diag H), so the result is the
same); Linears that read the same input (q/k/v, gate/up) share one Hessian instead of each
computing it; a block of columns always holds whole groups, so a group's scale is taken from its
columns as updated so far (the reference reads the not-yet-updated W when a group starts inside a
block; with group 128 and block 128 the two agree); the last group of a 576-wide row is 64 wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from llmq_core.quant.column_loop import ColumnLoop
from llmq_core.quant.hessian import drop_dead_inputs, inverse_hessian_factor, quantize_block_by_block
from llmq_core.quant.primitives import fake_quantize, find_scale_zero, model_average_bits
from llmq_core.registry import QuantSpec, register_method


def gptq_columns(block: torch.Tensor, inverse_block: torch.Tensor, bits: int, symmetric: bool,
                 group_size: int | None, scale: torch.Tensor | None, zero: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ inside one block of columns, updating `block` in place: each column is quantized, and its error,
    divided by U_jj, is pushed onto the block's later columns along row j of U. Returns the quantized columns
    and the scaled errors (which the caller pushes onto the columns after the block). `scale` and `zero`
    ([rows, width]) are each column's when they are fixed before the block (one per row, or act-order's static
    groups); None takes each group's from its columns as updated so far."""
    quantized, errors = torch.empty_like(block), torch.empty_like(block)
    for i in range(block.shape[1]):
        if scale is None:
            if i % group_size == 0:
                group_scale, group_zero = find_scale_zero(block[:, i:i + group_size], bits, symmetric)
            column_scale, column_zero = group_scale, group_zero
        else:
            column_scale, column_zero = scale[:, i:i + 1], zero[:, i:i + 1]
        w = block[:, i:i + 1]
        q = fake_quantize(w, column_scale, column_zero, bits)
        quantized[:, i:i + 1] = q
        error = (w - q) / inverse_block[i, i]
        block[:, i:] -= error @ inverse_block[i:i + 1, i:]
        errors[:, i:i + 1] = error
    return quantized, errors


def gptq_quantize_linear(linear: torch.nn.Linear, hessian: torch.Tensor, bits: int, group_size: int | None = None,
                         symmetric: bool = False, act_order: bool = False, static_groups: bool = False,
                         percdamp: float = 0.01, blocksize: int = 128, cuda_graph: bool = True) -> float:
    """Replace `linear.weight` by its GPTQ fake-quantized copy; returns the proxy loss sum (w - q)^2 / [H^-1]_jj^2 / 2.
    On a GPU each block's column loop replays a CUDA graph (`cuda_graph=False`: the eager loop, as on CPU)."""
    weight, hessian = drop_dead_inputs(linear.weight.data, hessian)
    rows, cols = weight.shape

    order = torch.arange(cols, device=weight.device)
    if act_order:  # columns with the largest input energy first, while there is the most freedom left
        order = torch.argsort(torch.diag(hessian), descending=True)
    # Each column's scale and zero where they are fixed before the column loop; None: each group's, in the loop
    scale = zero = None
    if group_size is None:
        scale, zero = (x.expand(rows, cols) for x in find_scale_zero(weight, bits, symmetric))
    else:
        # blocks hold whole groups, so that a group's scale is taken from its columns as updated so far
        blocksize = group_size * max(1, blocksize // group_size)
        if static_groups:  # from the weights before any update, in their original column order (for act-order)
            static = [find_scale_zero(weight[:, start:start + group_size], bits, symmetric)
                      for start in range(0, cols, group_size)]
            scale, zero = (torch.cat([pair[k] for pair in static], dim=1)[:, order // group_size] for k in (0, 1))
    if act_order:
        weight, hessian = weight[:, order], hessian[order][:, order]

    upper = inverse_hessian_factor(hessian, percdamp)

    def run(block: torch.Tensor, inverse_block: torch.Tensor, *fixed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return gptq_columns(block, inverse_block, bits, symmetric, group_size, *(fixed or (None, None)))

    columns = ColumnLoop(run, cuda_graph)
    quantized = torch.zeros_like(weight)
    loss = torch.zeros(rows, device=weight.device)
    for start in range(0, cols, blocksize):
        stop = min(start + blocksize, cols)
        inputs = [weight[:, start:stop].clone(), upper[start:stop, start:stop]]
        if scale is not None:
            inputs += [scale[:, start:stop], zero[:, start:stop]]
        quantized[:, start:stop], errors = columns(*inputs)
        loss += (errors ** 2).sum(dim=1) / 2
        weight[:, stop:] -= errors @ upper[start:stop, stop:]

    if act_order:
        quantized = quantized[:, torch.argsort(order)]
    linear.weight.data = quantized.to(linear.weight.dtype)
    return float(loss.sum())


@dataclass(frozen=True)
class GPTQOptions:
    act_order: bool = False  # the columns in order of decreasing input energy H_jj
    static_groups: bool = False  # group scales from the weights before any update (with act_order)
    percdamp: float = 0.01  # the dampening, a fraction of mean(diag H)
    true_sequential: bool = False  # each group of Linears calibrated on the groups quantized before it


@register_method("gptq", wbits=range(2, 9), notebook="ptq/gptq.ipynb", paper_name="GPTQ", needs_calibration=True,
                 options=GPTQOptions, summary="Hessian-aware column-by-column rounding with error feedback", offloads=True)
@torch.no_grad()
def quantize_gptq(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """Quantize the decoder block by block; each block is calibrated on the quantized blocks' outputs."""
    options = GPTQOptions(**spec.options)
    bits, losses, quantized = spec.grid_bits, {}, []

    def quantize_linear(name: str, linear: torch.nn.Linear, hessian: torch.Tensor) -> None:
        losses[name] = gptq_quantize_linear(linear, hessian, bits, spec.group_size, spec.symmetric,
                                            options.act_order, options.static_groups, options.percdamp)
        quantized.append(linear)

    quantize_block_by_block(model, calibration, quantize_linear, "GPTQ blocks", options.true_sequential)
    return {"avg_bits": model_average_bits(quantized, bits, spec.group_size), "quantized_linears": len(losses),
            "gptq_loss_total": sum(losses.values())}
