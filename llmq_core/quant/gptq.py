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

import math
from typing import Callable

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from llmq_core.models import decoder_layers
from llmq_core.quant.layerwise import block_linears, block_on, capture_block_inputs, linear_inputs, run_block
from llmq_core.quant.primitives import fake_quantize, find_scale_zero
from llmq_core.quant.registry import QuantSpec, register_method
from llmq_core.quant.rtn import model_average_bits

# The Linears of a Llama block that read the same input, in GPTQ's `--true-sequential` order: each
# group shares one Hessian, and with true_sequential it is calibrated on the already-quantized groups.
SEQUENTIAL_GROUPS = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                     ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


class Hessian:
    """H = 2 X X^T of a Linear's inputs, kept as a running mean over the calibration tokens."""

    def __init__(self, features: int, device: torch.device):
        self.matrix = torch.zeros(features, features, device=device)
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """inputs: (tokens, features)."""
        count = inputs.shape[0]
        self.matrix *= self.tokens / (self.tokens + count)
        self.tokens += count
        scaled = inputs.float() * math.sqrt(2 / self.tokens)
        self.matrix += scaled.T @ scaled


def drop_dead_inputs(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 copies of W and H where the inputs that were always 0 (H_jj = 0) have weight 0 and H_jj = 1:
    their weights do not matter, and H stays invertible."""
    weight, hessian = weight.float().clone(), hessian.float().clone()
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    return weight, hessian


@torch.no_grad()
def block_hessians(block: torch.nn.Module, linears: dict[str, torch.nn.Linear], groups: list[list[str]],
                   inputs: torch.Tensor, block_kwargs: dict) -> dict[str, torch.Tensor]:
    """H of each group's shared input on the calibration windows, keyed by the group's first Linear."""
    hessians = {group[0]: Hessian(linears[group[0]].in_features, linears[group[0]].weight.device) for group in groups}
    with linear_inputs({name: linears[name] for name in hessians}, lambda name, x: hessians[name].add_batch(x)):
        run_block(block, inputs, block_kwargs)
    return {name: hessian.matrix for name, hessian in hessians.items()}


def dampen_hessian(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H + percdamp * mean(diag H) * I, in place: GPTQ's regulariser, which keeps H safely invertible."""
    cols = hessian.shape[0]
    hessian[range(cols), range(cols)] += percdamp * torch.mean(torch.diag(hessian))
    return hessian


@torch.no_grad()
def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float) -> torch.Tensor:
    """U, upper triangular with H^-1 = U^T U, after dampening H by `percdamp` of its mean diagonal (in place).
    Row j of U holds the OBS updates of the columns after j, divided by sqrt([H_F^-1]_jj)."""
    dampen_hessian(hessian, percdamp)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    return torch.linalg.cholesky(inverse, upper=True)


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


class CapturedColumns:
    """A column loop for one block shape (`gptq_columns`; PB-LLM's and QuIP's use it too), captured once as a
    CUDA graph and replayed for each block of that shape. Its loop launches about ten small kernels per column,
    38,912 columns per LLaMA-3-8B block; on a GPU the launches, not the arithmetic, set its pace, and a replay
    is one launch for the whole block."""

    def __init__(self, run: Callable[..., tuple[torch.Tensor, ...]], *inputs: torch.Tensor):
        self.inputs = [x.clone() for x in inputs]  # the graph's own input buffers, copied into on each call
        side = torch.cuda.Stream()  # warm-up off the default stream, as CUDA graph capture asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run(*[x.clone() for x in self.inputs])
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = run(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`run`'s outputs for these inputs: for GPTQ the block's quantized columns and errors (copies: the next
        replay overwrites them)."""
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        self.graph.replay()
        return tuple(output.clone() for output in self.outputs)


class ColumnLoop:
    """`run(*inputs)` for each block of a Linear's columns: eager on a CPU (or with `cuda_graph=False`), and on a
    GPU one CapturedColumns per input shape (the last block may be narrower)."""

    def __init__(self, run: Callable[..., tuple[torch.Tensor, ...]], cuda_graph: bool = True):
        self.run, self.cuda_graph = run, cuda_graph
        self.captured: dict[tuple[torch.Size, ...], CapturedColumns] = {}

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (self.cuda_graph and inputs[0].is_cuda):
            return self.run(*inputs)
        shapes = tuple(x.shape for x in inputs)
        if shapes not in self.captured:
            self.captured[shapes] = CapturedColumns(self.run, *inputs)
        return self.captured[shapes](*inputs)


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


def input_groups(linears: dict[str, torch.nn.Linear]) -> list[list[str]]:
    """SEQUENTIAL_GROUPS where the block has them; any other Linear is a group of its own."""
    groups = [group for group in SEQUENTIAL_GROUPS if all(name in linears for name in group)]
    covered = {name for group in groups for name in group}
    return groups + [[name] for name in linears if name not in covered]


@torch.no_grad()
def quantize_block_by_block(model: PreTrainedModel, calibration: torch.Tensor,
                            quantize_linear: Callable[[str, torch.nn.Linear, torch.Tensor], None], desc: str,
                            true_sequential: bool = False) -> None:
    """The Hessian-based methods' walk through the decoder (GPTQ, QuIP, PB-LLM, BiLLM): for each block, the
    Hessians of its Linears' inputs on the calibration windows, `quantize_linear(name, linear, hessian)` for
    each Linear, then the block's outputs, so that the next block is calibrated on the *quantized* block.
    Each block is on the compute device for its turn (the whole model is, unless it is offloaded)."""
    inputs, block_kwargs = capture_block_inputs(model, calibration)
    for index, held in enumerate(tqdm(decoder_layers(model), desc=desc, leave=False)):
        with block_on(held, inputs.device) as block:
            linears = block_linears(block)
            groups = input_groups(linears)
            # true_sequential: calibrate each group on the outputs of the groups already quantized
            for stage in ([[group] for group in groups] if true_sequential else [groups]):
                hessians = block_hessians(block, linears, stage, inputs, block_kwargs)
                for group in stage:
                    for name in group:
                        quantize_linear(f"layers.{index}.{name}", linears[name], hessians[group[0]])
            inputs = run_block(block, inputs, block_kwargs)


OPTIONS = {"act_order": False, "static_groups": False, "percdamp": 0.01, "true_sequential": False}


@register_method("gptq", wbits=range(2, 9), notebook="ptq/gptq.ipynb", paper_name="GPTQ", needs_calibration=True,
                 options=OPTIONS, summary="Hessian-aware column-by-column rounding with error feedback", offloads=True)
@torch.no_grad()
def quantize_gptq(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """Quantize the decoder block by block; each block is calibrated on the quantized blocks' outputs."""
    options = {**OPTIONS, **spec.options}
    bits, losses, quantized = int(spec.wbits), {}, []

    def quantize_linear(name: str, linear: torch.nn.Linear, hessian: torch.Tensor) -> None:
        losses[name] = gptq_quantize_linear(linear, hessian, bits, spec.group_size, spec.symmetric,
                                            options["act_order"], options["static_groups"], options["percdamp"])
        quantized.append(linear)

    quantize_block_by_block(model, calibration, quantize_linear, "GPTQ blocks", options["true_sequential"])
    return {"avg_bits": model_average_bits(quantized, bits, spec.group_size), "quantized_linears": len(losses),
            "gptq_loss_total": sum(losses.values())}
