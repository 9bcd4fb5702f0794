"""BiLLM (Huang et al., 2024): 1-bit weights, with a second bit only where it matters.

Each Linear is processed in blocks of 128 input columns, left to right, as in GPTQ:

1. Salient columns. The sensitivity of a weight is s = w^2 / [U]_jj^2 (U the upper Cholesky factor of
   H^-1, as for GPTQ's OBS updates). Columns are ranked by their summed sensitivity, and the number k of
   salient columns is searched (1 .. max_salient_columns - 1) to minimise the binarization error of the
   block's sensitivity matrix, as the reference does (`salient_search="weights"`: of the weights, as the
   paper's Eq. 5 writes it). Salient columns get *residual* binarization: binarize, then binarize what is
   left (2 bits).
2. Bell-shaped split. The other weights are split at a break point p of |w| into a concentrated group
   (|w| < p) and a sparse group (|w| >= p), each binarized with its own scale. p is searched over the
   10 %, 11 %, ..., 90 % quantiles of |w|.
3. Compensation. The block's rounding error E is pushed onto the columns A after the block, GPTQ's lazy
   update W_A -= E U_BB^-1 U_BA: the OBS update for the block B rounded as a whole.

Average bits, the paper's way (its Eq. 14): 2 bits for a salient weight and 1 for the rest, 1 + r with r the
salient fraction (about 1.1). The 1 bit per weight that marks the concentrated / sparse split and the 1 / 128
bit per weight that marks the salient columns are "hardware flag" bits, which the paper counts apart
(1 + 1/128 = 1.008); the report gives them beside the average.

Binarization of a row over a set of its entries: w ~ alpha * sign(w - mu) + mu with mu the mean and
alpha the mean |w - mu| of those entries (the reference's `high_order_residual`; the paper writes
alpha * sign(w) without mu).

Where ours differs from the reference (Aaronhuang-778/BiLLM): the break point p splits the weights by |w| and
minimises their binarization error, as the paper's Eqs. 11-13 and its Fig. 5 state; the reference runs this
search on the sensitivity matrix too (with `--salient_metric hessian`), so it splits by sensitivity. For k we
follow the reference: on SmolLM2 (quick calibration) the search on the sensitivity gives 6.6 % salient columns
(1.07 bits) and perplexity 1123 / 5370 (enwiki-excerpt / PTB, quick evaluation), the search on the weights 19 %
(1.19 bits) and 1211 / 6777. The reference pushes E / diag(U_BB) instead of E U_BB^-1, which
ignores how the columns inside a block are coupled; on four Linears of SmolLM2 (blocks 3, 10 and 20) the
exact update gave 1-26 % less output error on three and 1.5 % more on one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel

from llmq_core.quant.hessian import drop_dead_inputs, inverse_hessian_factor, quantize_block_by_block
from llmq_core.registry import QuantSpec, register_method


def binarize_rows(weight: torch.Tensor, mask: torch.Tensor, order: int = 1) -> torch.Tensor:
    """Residual binarization of each row's entries under `mask` (0 elsewhere); any leading batch dimensions.

    order 1: alpha * sign(w - mu) + mu per row, mu the mean and alpha the mean |w - mu| of the masked
    entries (2 values per row). order 2: the same again on what is left, added (4 values)."""
    approximation = torch.zeros_like(weight)
    count = mask.sum(-1, keepdim=True).clamp(min=1)
    for _ in range(order):
        residual = (weight - approximation) * mask
        mean = residual.sum(-1, keepdim=True) / count
        centred = (residual - mean) * mask
        scale = centred.abs().sum(-1, keepdim=True) / count
        approximation = approximation + (torch.sign(centred) * scale + mean) * mask
    return approximation


def binarization_error(weight: torch.Tensor, mask: torch.Tensor, order: int = 1) -> torch.Tensor:
    """||W - B(W)||^2 over the masked entries."""
    return ((weight - binarize_rows(weight, mask, order)) * mask).pow(2).sum()


def residual_binarization_error(values: torch.Tensor) -> torch.Tensor:
    """binarization_error(values, everywhere, order=2), in fewer passes: after the first binarization, the
    residual r = c - alpha sign(c) (c = w - mu) is binarized again, at a cost of
    sum (r - mu_r)^2 - (sum |r - mu_r|)^2 / n."""
    centred = values - values.mean(-1, keepdim=True)
    residual = centred - centred.abs().mean(-1, keepdim=True) * torch.sign(centred)
    residual = residual - residual.mean(-1, keepdim=True)
    return (residual.square().sum(-1) - residual.abs().sum(-1).square() / values.shape[-1]).sum()


def salient_column_mask(weight: torch.Tensor, sensitivity: torch.Tensor, max_columns: int) -> torch.Tensor:
    """The k most sensitive columns (True), k in 1 .. min(max_columns, columns) - 1, minimising
    ||W - B2(salient) - B2(rest)||^2."""
    cols = weight.shape[1]
    ranked = torch.argsort(sensitivity.sum(0), descending=True)
    ordered = weight[:, ranked]  # the salient candidates are then the first k columns: slices, not masks
    errors = torch.stack([residual_binarization_error(ordered[:, :k]) + residual_binarization_error(ordered[:, k:])
                          for k in range(1, min(max_columns, cols))])  # at least one column is not salient
    mask = torch.zeros(cols, dtype=torch.bool, device=weight.device)
    mask[ranked[:int(torch.argmin(errors)) + 1]] = True
    return mask


def split_errors(values: torch.Tensor, breaks: torch.Tensor) -> torch.Tensor:
    """For each break point p, the binarization error of the concentrated (|w| < p) plus the sparse (|w| >= p)
    weights, summed over the rows of `values` (each row sorted ascending), in closed form: no masks.

    Binarizing a set S of a row costs sum (w - mu)^2 - (sum |w - mu|)^2 / |S| (mu its mean, alpha = mean |w - mu|).
    In a sorted row, |w| < p is the run [lo, hi) and |w| >= p the runs [0, lo) and [hi, m); prefix sums give
    each run's count, sum and sum of squares, and the position of mu splits sum |w - mu| into two sums."""
    rows, width = values.shape
    values = values.double()
    zero = values.new_zeros(rows, 1)
    sums, squares = torch.cat([zero, values.cumsum(1)], 1), torch.cat([zero, values.square().cumsum(1)], 1)
    queries = breaks.to(values).expand(rows, -1).contiguous()
    lo = torch.searchsorted(values, -queries, right=True)  # per row and break point: how many w <= -p
    hi = torch.searchsorted(values, queries)  # how many w < p

    def error(runs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        count = sum(b - a for a, b in runs)
        total = sum(sums.gather(1, b) - sums.gather(1, a) for a, b in runs)
        total_square = sum(squares.gather(1, b) - squares.gather(1, a) for a, b in runs)
        mean = total / count.clamp(min=1)
        at_mean = torch.searchsorted(values, mean, right=True)
        below = [(a, torch.minimum(torch.maximum(at_mean, a), b)) for a, b in runs]
        count_below = sum(c - a for a, c in below)
        sum_below = sum(sums.gather(1, c) - sums.gather(1, a) for a, c in below)
        absolute_deviation = total - 2 * sum_below - mean * (count - 2 * count_below)
        return total_square - total * mean - absolute_deviation.square() / count.clamp(min=1)

    start, stop = torch.zeros_like(lo), torch.full_like(lo, width)
    return (error([(lo, hi)]) + error([(start, lo), (hi, stop)])).sum(0)


def split_masks(weight: torch.Tensor, salient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The concentrated (|w| < p) and sparse (|w| >= p) masks of the non-salient weights, p searched."""
    others = ~salient.expand_as(weight)
    magnitude = weight.abs()
    breaks = torch.quantile(magnitude[others].float(), torch.linspace(0.10, 0.90, 81, device=weight.device))
    point = breaks[int(torch.argmin(split_errors(torch.sort(weight[:, ~salient], dim=1).values, breaks)))]
    concentrated = (magnitude < point) & others
    return concentrated, others & ~concentrated


def billm_binarize_block(weight: torch.Tensor, diagonal: torch.Tensor, max_salient_columns: int = 50,
                         salient_search: str = "sensitivity") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One block of columns binarized, and its masks: `salient` (columns), `concentrated`, `sparse`.
    `diagonal` is diag(U) over the block's columns (the sensitivity's denominator)."""
    sensitivity = weight ** 2 / diagonal.unsqueeze(0) ** 2
    salient = salient_column_mask(sensitivity if salient_search == "sensitivity" else weight, sensitivity,
                                  max_salient_columns)
    concentrated, sparse = split_masks(weight, salient)
    salient_weights = salient.expand_as(weight)
    binarized = (binarize_rows(weight, salient_weights, 2) + binarize_rows(weight, concentrated, 1)
                 + binarize_rows(weight, sparse, 1))
    return binarized, {"salient": salient, "concentrated": concentrated, "sparse": sparse}


@torch.no_grad()
def billm_quantize_linear(linear: torch.nn.Linear, hessian: torch.Tensor, blocksize: int = 128,
                          percdamp: float = 0.01, max_salient_columns: int = 50,
                          salient_search: str = "sensitivity") -> int:
    """Binarize `linear.weight` in place, block by block with GPTQ's lazy error feedback between blocks;
    returns the number of salient (2-bit) columns. The last block of a 576-wide row is 64 wide."""
    weight, hessian = drop_dead_inputs(linear.weight.data, hessian)
    upper = inverse_hessian_factor(hessian, percdamp)
    diagonal = torch.diagonal(upper)
    salient_columns = 0
    for start in range(0, weight.shape[1], blocksize):
        stop = min(start + blocksize, weight.shape[1])
        block = weight[:, start:stop]
        binarized, masks = billm_binarize_block(block, diagonal[start:stop], max_salient_columns, salient_search)
        errors = torch.linalg.solve_triangular(upper[start:stop, start:stop], block - binarized, upper=True, left=False)
        weight[:, start:stop] = binarized
        weight[:, stop:] -= errors @ upper[start:stop, stop:]
        salient_columns += int(masks["salient"].sum())
    linear.weight.data = weight.to(linear.weight.dtype)
    return salient_columns


@dataclass(frozen=True)
class BiLLMOptions:
    max_salient_columns: int = 50  # the search for k salient columns tries 1 .. max_salient_columns - 1
    percdamp: float = 0.01  # the dampening of H, a fraction of mean(diag H)
    salient_search: Literal["sensitivity", "weights"] = "sensitivity"  # k minimises the error of these (Eq. 5: weights)


@register_method("billm", wbits=(1.1,), notebook="ptq/billm.ipynb", paper_name="BiLLM", needs_calibration=True,
                 options=BiLLMOptions,
                 summary="salient columns binarized twice, the rest in two searched groups; ~1.1 bits", offloads=True)
@torch.no_grad()
def quantize_billm(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """Block by block, as GPTQ; group_size is BiLLM's block size (the paper's: 128; None: a whole row).
    wbits=1.1 is the paper's label: the searches set the bits, and the report measures them."""
    options = BiLLMOptions(**spec.options)
    weights, salient, flags, linears = 0, 0, 0.0, 0

    def quantize_linear(name: str, linear: torch.nn.Linear, hessian: torch.Tensor) -> None:
        nonlocal weights, salient, flags, linears
        blocksize = spec.group_size or linear.in_features
        columns = billm_quantize_linear(linear, hessian, blocksize, options.percdamp, options.max_salient_columns,
                                        options.salient_search)
        salient += columns * linear.out_features
        flags += linear.weight.numel() * (1 + 1 / blocksize)
        weights, linears = weights + linear.weight.numel(), linears + 1

    quantize_block_by_block(model, calibration, quantize_linear, "BiLLM blocks")
    return {"avg_bits": 1 + salient / weights, "salient_fraction": salient / weights, "flag_bits": flags / weights,
            "quantized_linears": linears}
