"""Shared quantization primitives: uniform min-max quantization of weight rows and groups, and symmetric
absmax quantization of rows (weights per channel, activations per token).

A b-bit uniform quantizer maps x to q = clamp(round(x / s) + z, 0, 2^b - 1) and back to
s * (q - z) ("fake quantization": the weight keeps its dtype, only its values change).
As in the GPTQ reference quantizer, the range [min, max] of each row or group is widened to
include 0, so that 0 is always exactly representable.
"""

from __future__ import annotations

import torch


def find_scale_zero(weight: torch.Tensor, bits: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of the last dimension (shape [..., 1] each), by min-max."""
    maxq = 2 ** bits - 1
    weight = weight.float()
    low = weight.amin(dim=-1, keepdim=True).clamp(max=0)
    high = weight.amax(dim=-1, keepdim=True).clamp(min=0)
    if symmetric:
        high = torch.maximum(-low, high)
        low = -high
    flat = (high == low)  # an all-zero row: any scale works, avoid dividing by 0
    low, high = torch.where(flat, -1.0, low), torch.where(flat, 1.0, high)
    scale = (high - low) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-low / scale)
    return scale, zero


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize to the integer grid and map back (in fp32)."""
    q = torch.clamp(torch.round(weight.float() / scale) + zero, 0, 2 ** bits - 1)
    return scale * (q - zero)


def quantize_weight_groupwise(weight: torch.Tensor, bits: int, group_size: int | None = None,
                              symmetric: bool = False) -> torch.Tensor:
    """Fake-quantize a [out, in] weight with one scale per output row, or per `group_size` input columns.

    Groups never straddle rows. When `in` is not a multiple of `group_size`, the last group of
    each row is shorter (576 = 4 x 128 + 64 on SmolLM2), as in the GPTQ reference.
    """
    rows, cols = weight.shape
    group = cols if group_size is None else min(group_size, cols)
    out = torch.empty(rows, cols, dtype=torch.float32, device=weight.device)
    full = (cols // group) * group
    for start, stop, width in ((0, full, group), (full, cols, cols - full)):
        if stop > start:
            block = weight[:, start:stop].reshape(rows, -1, width)
            scale, zero = find_scale_zero(block, bits, symmetric)
            out[:, start:stop] = fake_quantize(block, scale, zero, bits).reshape(rows, stop - start)
    return out.to(weight.dtype)


def quantize_symmetric_absmax(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric fake quantization with one scale per row of the last dimension: s = max|x| / (2^(b-1) - 1),
    x -> s * round(x / s). SmoothQuant's quantizer, for weights per output channel and activations per token."""
    scale = values.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-5) / (2 ** (bits - 1) - 1)
    return (torch.round(values.float() / scale) * scale).to(values.dtype)


def average_bits(bits: int, group_size: int | None, in_features: int) -> float:
    """Bits per weight including the fp16 scale and the b-bit zero stored for each group."""
    groups_per_row = 1 if group_size is None else -(-in_features // group_size)
    return bits + groups_per_row * (16 + bits) / in_features


def model_average_bits(linears: list[torch.nn.Linear], bits: int, group_size: int | None) -> float:
    """`average_bits` over the Linears, weighted by their number of weights."""
    count = sum(linear.weight.numel() for linear in linears)
    return sum(average_bits(bits, group_size, l.in_features) * l.weight.numel() for l in linears) / count
