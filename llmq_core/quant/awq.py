"""AWQ (Lin et al., 2024): activation-aware weight quantization.

A few input channels of each Linear carry much larger activations than the rest, and the weights that
multiply them matter most. Scaling column j of W by s_j > 1 and the input channel j by 1/s_j leaves W x
unchanged, but the rounding error of that column shrinks relative to its weight: AWQ protects the salient
channels this way instead of keeping them in higher precision. Per group of Linears that read the same
input, it searches

    s = mean|x|^alpha / sqrt(max * min),   alpha in {0, 1/20, ..., 19/20},

for the alpha whose quantized weights Q(W diag(s)) diag(s)^-1 give the smallest mean squared error at the
output of the module the group feeds. alpha = 0 is plain RTN, so the search can only improve on it. 1/s
is folded into the operation that produces the input (an RMSNorm, or the Linear before), so the model's
full-precision function is unchanged. Then, per group of weights, a clipping range max|w| * (1 - i/20),
i < 10, is searched on the Linear's own output, and the scaled, clipped weights are rounded to nearest.

Where ours differs from the reference (mit-han-lab/llm-awq): calibration is our windows of the calibration
text (the reference: 128 Pile documents of at most 512 tokens, concatenated into 512-token blocks); RTN is
our shared quantizer, whose range always includes 0 (the reference's asymmetric range need not; for groups
of 128 that hold both signs they agree); the last group of a 576-wide row is 64 wide (the reference requires
widths that divide); under grouped-query attention the reference skips the o_proj/v_proj pair, while we
search it with the scales tied across the query heads that share a value head (exact: each value channel
feeds the same channel of every head in its group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from llmq_core.models import decoder_layers, mlp_input_norm
from llmq_core.quant.layerwise import (block_linears, block_on, capture_block_inputs, expand_to_inputs, fold_scales,
                                      forward_in_chunks, linear_inputs, tie_to_previous)
from llmq_core.quant.primitives import fake_quantize, find_scale_zero, model_average_bits, quantize_weight_groupwise
from llmq_core.registry import QuantSpec, register_method

SCALE_GRID = 20  # alpha = 0, 0.05, ..., 0.95
CLIP_GRID, CLIP_STEPS, CLIP_TOKENS = 20, 10, 512  # shrink max|w| by 0 to 45 %, judged on ~512 tokens


@dataclass(frozen=True)
class ScaleGroup:
    """Linears that read one input, the operation producing that input, and the module whose output is judged."""

    previous: str
    linears: tuple[str, ...]
    inspect: str


def scale_groups(block: torch.nn.Module) -> tuple[ScaleGroup, ...]:
    """The reference's four groups of a Llama block; in a Gemma block the MLP reads pre_feedforward_layernorm."""
    return (
        ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup(mlp_input_norm(block), ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    )


def output_mse(module: torch.nn.Module, inputs: torch.Tensor, kwargs: dict, reference: torch.Tensor) -> float:
    return float((forward_in_chunks(module, inputs, kwargs).float() - reference).pow(2).mean())


@torch.no_grad()
def search_scales(module: torch.nn.Module, linears: list[torch.nn.Linear], inputs: torch.Tensor, kwargs: dict,
                  bits: int, group_size: int | None, symmetric: bool, previous_width: int, head_dim: int
                  ) -> tuple[torch.Tensor, list[float]]:
    """The best scales (one per output channel of the previous op) and the output MSE at each alpha of the grid.

    `inputs` are the Linears' inputs (windows, seqlen, features); `module` maps them to the judged output."""
    reference = forward_in_chunks(module, inputs, kwargs).float()
    mean_abs = tie_to_previous(inputs.abs().float().reshape(-1, inputs.shape[-1]).mean(0), previous_width, head_dim,
                               torch.mean)
    originals = [linear.weight.data.clone() for linear in linears]
    losses, best, best_loss = [], None, float("inf")
    for step in range(SCALE_GRID):
        scales = mean_abs.pow(step / SCALE_GRID).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()
        per_input = expand_to_inputs(scales, inputs.shape[-1], head_dim)
        for linear, weight in zip(linears, originals):
            scaled = quantize_weight_groupwise(weight.float() * per_input, bits, group_size, symmetric) / per_input
            linear.weight.data = scaled.to(weight.dtype)
        losses.append(output_mse(module, inputs, kwargs, reference))
        if losses[-1] < best_loss:
            best, best_loss = scales, losses[-1]
    for linear, weight in zip(linears, originals):
        linear.weight.data = weight
    return best, losses


def column_groups(columns: int, group_size: int | None) -> list[tuple[int, int]]:
    """(start, stop) of each quantization group of a row; the last one is shorter when the width does not divide."""
    width = group_size or columns
    return [(start, min(start + width, columns)) for start in range(0, columns, width)]


@torch.no_grad()
def search_clipping(weight: torch.Tensor, inputs: torch.Tensor, bits: int, group_size: int | None,
                    symmetric: bool = False) -> torch.Tensor:
    """Per row and group, the clipping bound max|w| * (1 - i/20) whose quantized group best reproduces the
    group's share of the output on the inputs (tokens, columns). Returns a (rows, columns) tensor of bounds."""
    weight, inputs = weight.float(), inputs.float()
    inputs = inputs[::max(1, inputs.shape[0] // CLIP_TOKENS)]
    bounds = torch.empty_like(weight)
    for start, stop in column_groups(weight.shape[1], group_size):
        group, x = weight[:, start:stop], inputs[:, start:stop]
        reference = x @ group.T  # (tokens, rows)
        largest = group.abs().amax(dim=1, keepdim=True)
        best_error = torch.full_like(largest, float("inf"))
        best_bound = largest.clone()
        for step in range(CLIP_STEPS):
            bound = largest * (1 - step / CLIP_GRID)
            clipped = group.clamp(-bound, bound)
            quantized = fake_quantize(clipped, *find_scale_zero(clipped, bits, symmetric), bits)
            error = (x @ quantized.T - reference).pow(2).mean(0).unsqueeze(1)
            better = error < best_error
            best_error, best_bound = torch.where(better, error, best_error), torch.where(better, bound, best_bound)
        bounds[:, start:stop] = best_bound
    return bounds


@register_method("awq", wbits=range(2, 9), notebook="ptq/awq.ipynb", paper_name="AWQ", needs_calibration=True,
                 summary="activation-aware channel scaling and clipping, then round-to-nearest", offloads=True)
@torch.no_grad()
def quantize_awq(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """Search scales and clipping block by block on full-precision activations, then round every Linear."""
    alphas = {group.inspect: [] for group in scale_groups(decoder_layers(model)[0])}
    bits, quantized = spec.grid_bits, []
    inputs, block_kwargs = capture_block_inputs(model, calibration)
    for index, held in enumerate(tqdm(decoder_layers(model), desc="AWQ blocks", leave=False)):
        with block_on(held, inputs.device) as block:
            linears, modules = block_linears(block), dict(block.named_modules())
            head_dim, groups = block.self_attn.head_dim, scale_groups(block)
            input_of = {name: group.linears[0] for group in groups for name in group.linears}  # a group shares one
            seen: dict[str, list[torch.Tensor]] = {group.linears[0]: [] for group in groups}
            with linear_inputs({name: linears[name] for name in seen}, lambda name, x: seen[name].append(x)):
                outputs = forward_in_chunks(block, inputs, block_kwargs[index])  # the next block sees full precision
            features = {name: torch.cat(x).view(*inputs.shape[:2], -1) for name, x in seen.items()}
            searched = []
            for group in groups:  # every search on the unscaled block, as in the reference
                group_linears = [linears[name] for name in group.linears]
                scales, losses = search_scales(modules[group.inspect], group_linears, features[group.linears[0]],
                                               block_kwargs[index] if group.inspect == "self_attn" else {}, bits,
                                               spec.group_size, spec.symmetric, modules[group.previous].weight.shape[0],
                                               head_dim)
                alphas[group.inspect].append(losses.index(min(losses)) / SCALE_GRID)
                searched.append((group, group_linears, scales))
            for group, group_linears, scales in searched:
                per_input = fold_scales(modules[group.previous], group_linears, scales, head_dim)
                first = group.linears[0]  # the clipping search sees the scaled inputs
                features[first] = features[first] / per_input.to(features[first].dtype)
            for name, linear in linears.items():
                if not name.endswith(("q_proj", "k_proj")):  # their outputs meet in q k^T: no per-Linear target
                    bounds = search_clipping(linear.weight, features[input_of[name]].reshape(-1, linear.in_features),
                                             bits, spec.group_size, spec.symmetric)
                    linear.weight.data = linear.weight.float().clamp(-bounds, bounds).to(linear.weight.dtype)
                linear.weight.data = quantize_weight_groupwise(linear.weight, bits, spec.group_size, spec.symmetric)
                quantized.append(linear)
            inputs = outputs
    return {"avg_bits": model_average_bits(quantized, bits, spec.group_size), "quantized_linears": len(quantized),
            "awq_mean_alpha": {name: round(sum(a) / len(a), 3) for name, a in alphas.items()}}
