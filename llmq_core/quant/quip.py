"""QuIP (Chee et al., 2023): quantization with incoherence processing, then LDLQ rounding.

Rounding hurts least when no weight is much larger than the rest and the Hessian H = E[x x^T] of the layer
loss tr((W - Q) H (W - Q)^T) has no dominant direction aligned with a coordinate: W and H "incoherent". QuIP
makes them so with random orthogonal matrices U (rows) and V (columns),

    W' = U W V^T,   H' = V H V^T,   so that   tr((W' - Q') H' (W' - Q')^T) = tr((W - U^T Q' V) H (...)^T),

quantizes W' against H', and folds the transforms back: the model keeps a plain Linear with weight U^T Q' V.
U and V are Kronecker products of two small Haar-random orthogonal matrices with a random permutation
(n = p q with p, q near sqrt(n)), as in the paper: cheap to draw and to apply, and as incoherent as a dense one
in practice. Before the transforms, a diagonal rescaling W <- W D, H <- D^-1 H D^-1 with
D = (diag H / diag W^T W)^(1/4) balances the two (the paper's Algorithm 1; undone at the end).

LDLQ rounds column k to Q(W_k + (W_{<k} - Q_{<k}) a_k), where H = (A + I) D (A + I)^T is the UDU^T
decomposition (A strictly upper triangular): linear feedback of the rounding errors made so far. The paper
proves LDLQ optimal within its class and equal to OPTQ (GPTQ). The grid is the paper's for incoherent weights:
2^b levels evenly spaced on [-rho, rho], rho = 2.4 * RMS(W'), one scale per matrix ("qfn b").

Where ours differs from the reference (Cornell-RelaxML/QuIP, `--incoh_processing --quant ldlq`): the
reference's orthogonal matrices are two-factor "butterflies" of many small blocks, ours the paper's Kronecker
products; the reference's LDLQ ends with one greedy coordinate pass (`--npasses 1`), ours is LDLQ alone as
in the paper's Algorithm 2; q/k/v and gate/up share one Hessian (the reference builds one per Linear from the
same inputs); the orthogonal matrices are drawn from the seed option, per Linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from llmq_core.quant.column_loop import ColumnLoop
from llmq_core.quant.hessian import dampen_hessian, drop_dead_inputs, quantize_block_by_block
from llmq_core.registry import QuantSpec, register_method

# rho / RMS(W'): the reference's `qfn b`. Made for low bits: the ~1.6 % of (near-Gaussian) weights beyond it
# are clipped, which at 8 bits costs more than the rounding (about 5 % relative weight error).
GRID_RANGE = 2.4


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed n x n orthogonal matrix: QR of a Gaussian matrix, with the signs of R's diagonal."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def kronecker_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """(A kron B) P: A (p x p) and B (q x q) random orthogonal, p q = n with p the largest divisor <= sqrt(n),
    P a random permutation. Orthogonal, as a product of orthogonal matrices."""
    p = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    product = torch.kron(random_orthogonal(p, generator), random_orthogonal(n // p, generator))
    return product[:, torch.randperm(n, generator=generator)].float()


def ldl_upper(hessian: torch.Tensor) -> torch.Tensor:
    """A, strictly upper triangular, with H = (A + I) D (A + I)^T: the Cholesky factor of H with its order
    reversed (so that it is upper), divided by its diagonal."""
    flipped = torch.linalg.cholesky(torch.flip(hessian.double(), (0, 1)))
    upper = torch.flip(flipped, (0, 1))
    unit = upper / torch.diagonal(upper)
    return (unit - torch.eye(hessian.shape[0], dtype=unit.dtype, device=unit.device)).float()


def ldlq_columns(target: torch.Tensor, block: torch.Tensor, feedback_block: torch.Tensor, levels: int
                 ) -> tuple[torch.Tensor]:
    """LDLQ inside one block of columns: column k is round(target_k + (w_{<k} - q_{<k}) a_k) over the block's
    earlier columns, clamped to the grid (`target` holds the feedback of the columns before the block)."""
    quantized = torch.zeros_like(block)
    for k in range(block.shape[1]):
        local = (block[:, :k] - quantized[:, :k]) @ feedback_block[:k, k]
        quantized[:, k] = torch.clamp(torch.round(target[:, k] + local), 0, levels - 1)
    return (quantized,)


@torch.no_grad()
def ldlq_round(weight: torch.Tensor, hessian: torch.Tensor, levels: int, blocksize: int = 128,
               cuda_graph: bool = True) -> torch.Tensor:
    """Round `weight` (in grid units, 0 .. levels - 1) column by column with LDLQ's linear feedback.

    Column k: round(w_k + (w_{<k} - q_{<k}) a_k), clamped to the grid; the feedback of columns before the
    current block of `blocksize` is added once per block, as one matrix product (GPTQ's lazy batch update).
    On a GPU each block's column loop replays a CUDA graph, as GPTQ's does (`cuda_graph=False`: the eager loop)."""
    feedback = ldl_upper(hessian)
    quantized = torch.zeros_like(weight)

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor]:
        return ldlq_columns(*inputs, levels)

    columns = ColumnLoop(run, cuda_graph)
    for start in range(0, weight.shape[1], blocksize):
        stop = min(start + blocksize, weight.shape[1])
        target = weight[:, start:stop] + (weight[:, :start] - quantized[:, :start]) @ feedback[:start, start:stop]
        quantized[:, start:stop], = columns(target, weight[:, start:stop], feedback[start:stop, start:stop])
    return quantized


def rescaling(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """D = (diag H / diag W^T W)^(1/4), per input column (H normalised by its largest entry, as the reference)."""
    diag_h = torch.diagonal(hessian / hessian.abs().max()).clamp(min=1e-8)
    diag_w = (weight ** 2).sum(dim=0).clamp(min=1e-8)
    return (diag_h / diag_w).pow(0.25).clamp(min=1e-8)


@dataclass
class Incoherence:
    """What `incoherence_process` did to a weight, so that `incoherence_unprocess` can undo it."""

    left: torch.Tensor  # U, rows x rows
    right: torch.Tensor  # V, cols x cols
    scale: torch.Tensor  # D, per input column


@torch.no_grad()
def incoherence_process(weight: torch.Tensor, hessian: torch.Tensor, generator: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor, Incoherence]:
    """Rescale by D, then rotate: W' = U (W D) V^T, H' = V (D^-1 H D^-1) V^T (H normalised to trace n, plus
    1e-2 I, as the reference does before its transform)."""
    weight, hessian = weight.float(), hessian.float()
    scale = rescaling(weight, hessian)
    weight, hessian = weight * scale, hessian / scale[:, None] / scale[None, :]
    rows, cols = weight.shape
    left = kronecker_orthogonal(rows, generator).to(weight.device)
    right = kronecker_orthogonal(cols, generator).to(weight.device)
    hessian = hessian * (cols / torch.trace(hessian)) + 1e-2 * torch.eye(cols, device=weight.device)
    return left @ weight @ right.T, right @ hessian @ right.T, Incoherence(left, right, scale)


def incoherence_unprocess(weight: torch.Tensor, state: Incoherence) -> torch.Tensor:
    """U^T W' V D^-1: back to the original basis, where the model uses a plain Linear."""
    return (state.left.T @ weight @ state.right) / state.scale


@torch.no_grad()
def quip_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, generator: torch.Generator,
                         percdamp: float = 0.01, grid_range: float = GRID_RANGE) -> torch.Tensor:
    """The QuIP pipeline for one weight (rows x cols) and its Hessian (cols x cols): process, LDLQ on the grid
    of 2^bits levels over [-rho, rho], unprocess."""
    weight, hessian, state = incoherence_process(*drop_dead_inputs(weight, hessian), generator)
    dampen_hessian(hessian, percdamp)
    levels = 2 ** bits
    rho = grid_range * weight.pow(2).mean().sqrt() + 1e-16
    grid_units = torch.clamp((weight / rho + 1) / 2 * (levels - 1), 0, levels - 1)
    quantized = (ldlq_round(grid_units, hessian, levels) / (levels - 1) * 2 - 1) * rho
    return incoherence_unprocess(quantized, state)


@dataclass(frozen=True)
class QuIPOptions:
    percdamp: float = 0.01  # the dampening of H, a fraction of mean(diag H)
    seed: int = 0  # of the random orthogonal matrices
    grid_range: float = GRID_RANGE  # rho / RMS of the processed weights: where the grid ends


@register_method("quip", wbits=range(2, 9), notebook="ptq/quip.ipynb", paper_name="QuIP", needs_calibration=True,
                 options=QuIPOptions, grouped=False,
                 summary="random orthogonal incoherence processing, then LDLQ (OPTQ) rounding", offloads=True)
@torch.no_grad()
def quantize_quip(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """Block by block, as GPTQ: each block is calibrated on the quantized blocks' outputs."""
    options = QuIPOptions(**spec.options)
    generator = torch.Generator().manual_seed(options.seed)
    bits, linears = spec.grid_bits, []

    def quantize_linear(name: str, linear: torch.nn.Linear, hessian: torch.Tensor) -> None:
        linear.weight.data = quip_quantize_weight(linear.weight, hessian, bits, generator, options.percdamp,
                                                  options.grid_range).to(linear.weight.dtype)
        linears.append(linear)

    quantize_block_by_block(model, calibration, quantize_linear, "QuIP blocks")
    numel = sum(linear.weight.numel() for linear in linears)
    extra_bits = sum(16 * (1 + linear.in_features) for linear in linears)  # rho and D in fp16; U, V come from the seed
    return {"avg_bits": bits + extra_bits / numel, "quantized_linears": len(linears)}
