"""NormalFloat (NF-k): QLoRA's information-theoretically optimal data type for normal weights, at any k.

A pretrained weight is close to N(0, sigma). Scaled by its block's absolute maximum, it lies in
[-1, 1], and a code book whose 2^k values are *quantiles* of N(0, 1) puts the same number of
weights in every code. QLoRA builds it asymmetrically so that 0 is exact:

    positive half:  Phi^-1( linspace(delta, 1/2, 2^(k-1) + 1) ), the last point (0) dropped
    negative half: -Phi^-1( linspace(delta, 1/2, 2^(k-1)) ),     the last point dropped
    code = sorted(positive + [0] + negative) / max

with delta = 1 - (1/(2·2^k) + 1/(2·(2^k - 1))) / 2, which is bitsandbytes' 0.9677083 for k = 4
(so `normalfloat_code(4)` is bitsandbytes' NF4 table; a test checks it). bitsandbytes has only NF4;
this file gives NF3 and NF2 by the same construction.

Quantization is blockwise: each run of `blocksize` (64) consecutive weights of a row-major
weight has its own absmax. With double quantization the absmaxes are themselves stored in 8 bits
(bitsandbytes' dynamic code, blocks of 256, after subtracting their mean), as `compress_statistics`.
"""

from __future__ import annotations

import torch

BLOCKSIZE = 64  # bitsandbytes' NF4 block
STATISTICS_BLOCKSIZE = 256  # double quantization: one fp32 scale per 256 absmaxes


def normalfloat_code(bits: int) -> torch.Tensor:
    """The 2^bits NF values in [-1, 1], ascending, with an exact 0."""
    levels = 2 ** bits
    delta = 1 - (1 / (2 * levels) + 1 / (2 * (levels - 1))) / 2
    positive = torch.special.ndtri(torch.linspace(delta, 0.5, levels // 2 + 1, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(delta, 0.5, levels // 2, dtype=torch.float64)[:-1])
    code = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (code / code.abs().max()).float()


def dynamic_code() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic (exponent + fraction) code, in which it stores the statistics."""
    from bitsandbytes.functional import create_dynamic_map

    return create_dynamic_map(signed=True).float().sort().values


def nearest_code_index(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """For each value, the index of the nearest entry of the ascending `code` (a binary search on midpoints)."""
    midpoints = (code[1:] + code[:-1]) / 2
    return torch.bucketize(values, midpoints.to(values.device, values.dtype)).to(torch.uint8)


def quantize_blockwise(values: torch.Tensor, code: torch.Tensor, blocksize: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened `values` in blocks of `blocksize`: (code indices, absmax per block)."""
    blocks = values.reshape(-1, blocksize).float()
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return nearest_code_index(blocks / absmax, code), absmax.squeeze(1)


def dequantize_blockwise(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    return code.to(absmax.device)[indices.long()] * absmax.unsqueeze(1)


def roundtrip_8bit(values: torch.Tensor, blocksize: int) -> torch.Tensor:
    """1-D `values` as they come back from bitsandbytes' 8-bit storage: dynamic code, one absmax per `blocksize`."""
    padded = torch.cat([values, values.new_zeros((-values.numel()) % blocksize)])
    code = dynamic_code()
    return dequantize_blockwise(*quantize_blockwise(padded, code, blocksize), code).flatten()[:values.numel()]


def double_quantize(absmax: torch.Tensor) -> torch.Tensor:
    """The absmaxes as they come back from their 8-bit storage (mean + dynamic code, blocks of 256)."""
    mean = absmax.mean()
    return roundtrip_8bit(absmax - mean, STATISTICS_BLOCKSIZE) + mean


def normalfloat_roundtrip(weight: torch.Tensor, bits: int, double_quant: bool = True,
                          blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """`weight` quantized to NF-`bits` blockwise and dequantized, in its dtype."""
    code = normalfloat_code(bits)
    indices, absmax = quantize_blockwise(weight, code, blocksize)
    if double_quant:
        absmax = double_quantize(absmax)
    return dequantize_blockwise(indices, absmax, code).reshape(weight.shape).to(weight.dtype)


def code_entropy(indices: torch.Tensor, levels: int) -> torch.Tensor:
    """Shannon entropy in bits of the code histogram of each row of `indices` (rows are blocks)."""
    rows, length = indices.shape
    flat = indices.long() + levels * torch.arange(rows, device=indices.device).unsqueeze(1)
    counts = torch.bincount(flat.flatten(), minlength=rows * levels).view(rows, levels).float()
    return entropy_bits(counts / length)


def entropy_bits(frequency: torch.Tensor) -> torch.Tensor:
    """-sum p log2 p over the last dimension (0 log 0 = 0)."""
    return -(frequency * torch.log2(frequency.clamp_min(1e-12))).sum(dim=-1)
