"""The Hessian-based methods' shared machinery (GPTQ, QuIP, PB-LLM, BiLLM): the Hessian H = 2 X X^T of a Linear's
calibration inputs, its dampened inverse factor, and the walk through the decoder that collects each block's
Hessians, quantizes the block's Linears with them, and calibrates the next block on the quantized block's outputs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from llmq_core.models import decoder_layers
from llmq_core.quant.layerwise import block_linears, block_on, capture_block_inputs, linear_inputs, run_block

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
                hessians = block_hessians(block, linears, stage, inputs, block_kwargs[index])
                for group in stage:
                    for name in group:
                        quantize_linear(f"layers.{index}.{name}", linears[name], hessians[group[0]])
            inputs = run_block(block, inputs, block_kwargs[index])
