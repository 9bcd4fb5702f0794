"""DB-LLM (Chen et al., 2024): Flexible Dual Binarization, then Deviation-Aware Distillation, at 2 bits.

Flexible Dual Binarization (FDB). A 2-bit weight is the sum of two scaled binary matrices,

    w ~ a1 * b1 + a2 * b2,    b1, b2 in {0, 1},  one (a1, a2) per row and group of 128 columns,

so that a 2-bit matrix product becomes two binary ones. It starts from 2-bit uniform quantization: with
a1 = 2s and a2 = -s the four values {0, a1, a2, a1 + a2} are the grid {0, 2s, -s, s} (or its mirror
{0, -2s, s, -s}, whichever fits the group better). Training a1 and a2 afterwards makes the four levels
non-uniform: that is the flexibility.

Deviation-Aware Distillation (DAD). The scales (not the binary codes) are trained against the FP16 model on the
calibration windows. The loss is a per-token KL divergence from the teacher's next-token distribution, and the
paper weights each token by how ambiguous it is to the teacher, measured by entropy, so that training focuses on
the tokens whose predictions quantization distorts most.

Where ours is our own reading (no reference code is public, and the paper's text was not available offline):
- The initial s of each row and group is the one of 11 candidates (50 % to 100 % of the range that avoids
  clipping) with the least squared error, and the orientation is chosen the same way.
- The binary codes are fixed at their initial values; only a1 and a2 are trained, as the issue asks.
- The DAD weight of a token is the teacher's entropy divided by log(vocabulary size), and the loss is the
  weighted mean of the per-token KL(teacher || student).
- Optimiser and schedule: AdamW on the scales, lr 1e-4 with cosine decay, one window per step. The number of steps
  is a parameter; the quick CPU sweep runs a reduced schedule, which its notebook states.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from llmq_core.models import decoder_layers
from llmq_core.quant.layerwise import block_linears
from llmq_core.registry import QuantSpec, register_method

CLIP_CANDIDATES = torch.linspace(0.5, 1.0, 11)


def dual_binarize(weight: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor, torch.Tensor]:
    """The FDB initialisation of a [out, in] weight: codes b1, b2 (bool, [out, in]) and scales a1, a2
    ([out, groups]), from the 2-bit grid {-s, 0, s, 2s} or its mirror with the least squared error per group.
    A last group narrower than group_size (576 = 4 x 128 + 64) is fine."""
    rows, cols = weight.shape
    group = cols if group_size is None else group_size
    groups = math.ceil(cols / group)
    padded = F.pad(weight.float(), (0, groups * group - cols)).view(rows, groups, group)
    valid = F.pad(torch.ones(cols, dtype=torch.bool, device=weight.device), (0, groups * group - cols)).view(groups, group)
    best_error = torch.full((rows, groups), float("inf"), device=weight.device)
    best_scale = torch.zeros(rows, groups, device=weight.device)
    best_sign = torch.ones(rows, groups, device=weight.device)
    for sign in (1.0, -1.0):
        oriented = sign * padded
        # the range of {-s, 0, s, 2s} covers [-s, 2s]: the s that clips nothing, then smaller ones
        reach = torch.maximum(oriented.amax(-1) / 2, -oriented.amin(-1)).clamp(min=1e-8)
        for fraction in CLIP_CANDIDATES.tolist():
            scale = (fraction * reach).unsqueeze(-1)
            levels = torch.clamp(torch.round(oriented / scale), -1, 2) * scale
            error = ((levels - oriented).square() * valid).sum(-1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_scale = torch.where(better, scale.squeeze(-1), best_scale)
            best_sign = torch.where(better, sign, best_sign)
    level = torch.clamp(torch.round(best_sign.unsqueeze(-1) * padded / best_scale.unsqueeze(-1)), -1, 2)
    first = (level >= 1).view(rows, -1)[:, :cols]  # 2s and s = 2s - s
    second = ((level == -1) | (level == 1)).view(rows, -1)[:, :cols]  # -s and s
    return first, second, 2 * best_sign * best_scale, -best_sign * best_scale


class DualBinaryLinear(torch.nn.Module):
    """A Linear whose weight is a1 * b1 + a2 * b2 per row and group: fixed binary codes, trainable scales."""

    def __init__(self, linear: torch.nn.Linear, group_size: int | None = 128):
        super().__init__()
        first, second, scale_first, scale_second = dual_binarize(linear.weight.data, group_size)
        self.group_size = linear.in_features if group_size is None else group_size
        self.register_buffer("first", first)
        self.register_buffer("second", second)
        self.scale_first = torch.nn.Parameter(scale_first)
        self.scale_second = torch.nn.Parameter(scale_second)
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def weight_matrix(self) -> torch.Tensor:
        def per_column(scale: torch.Tensor) -> torch.Tensor:
            return scale.repeat_interleave(self.group_size, dim=1)[:, :self.in_features]
        return per_column(self.scale_first) * self.first + per_column(self.scale_second) * self.second

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, self.weight_matrix().to(inputs.dtype), self.bias)


def deviation_aware_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student), each token weighted by the teacher's normalized entropy."""
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    student = F.log_softmax(student_logits.float(), dim=-1)
    divergence = (teacher.exp() * (teacher - student)).sum(-1)
    entropy = -(teacher.exp() * teacher).sum(-1) / math.log(teacher.shape[-1])
    return (entropy * divergence).sum() / entropy.sum().clamp(min=1e-8)


@dataclass
class Swap:
    """Where a DualBinaryLinear replaced a Linear, so that the Linear can be put back."""
    parent: torch.nn.Module
    child: str
    linear: torch.nn.Linear
    dual: DualBinaryLinear


def swap_in_dual_binary(model: PreTrainedModel, group_size: int | None) -> list[Swap]:
    """Replace every Linear of the decoder blocks by its DualBinaryLinear (the FDB initialisation)."""
    swaps = []
    for block in decoder_layers(model):
        for name, linear in block_linears(block).items():
            parent_name, _, child = name.rpartition(".")
            swap = Swap(block.get_submodule(parent_name), child, linear, DualBinaryLinear(linear, group_size))
            setattr(swap.parent, child, swap.dual)
            swaps.append(swap)
    return swaps


def distill_scales(student: PreTrainedModel, teacher: PreTrainedModel, swaps: list[Swap],
                   windows: torch.Tensor, steps: int, lr: float = 1e-4) -> list[float]:
    """Train the swapped-in scales (nothing else) on the DAD loss, one calibration window per step; the losses."""
    student.requires_grad_(False)
    scales = [scale for swap in swaps for scale in (swap.dual.scale_first, swap.dual.scale_second)]
    for scale in scales:
        scale.requires_grad_(True)
    optimizer = torch.optim.AdamW(scales, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    losses = []
    for step in tqdm(range(steps), desc="DB-LLM distillation", leave=False):
        window = windows[step % len(windows)].unsqueeze(0).to(student.device)
        with torch.no_grad():
            teacher_logits = teacher(window).logits
        loss = deviation_aware_loss(student(window).logits, teacher_logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        losses.append(float(loss.detach()))
    for scale in scales:
        scale.requires_grad_(False)
    return losses


@torch.no_grad()
def fold_back(swaps: list[Swap]) -> None:
    """Put the plain Linears back, with the trained a1 * b1 + a2 * b2 as their weights (for evaluation)."""
    for swap in swaps:
        swap.linear.weight.data = swap.dual.weight_matrix().to(swap.linear.weight.dtype)
        setattr(swap.parent, swap.child, swap.linear)


@dataclass(frozen=True)
class DBLLMOptions:
    steps: int = 256  # distillation steps, one calibration window each, the whole model at once
    lr: float = 1e-4  # AdamW's on the scales, with cosine decay


@register_method("dbllm", wbits=(2,), notebook="ptq/dbllm.ipynb", paper_name="DB-LLM", needs_calibration=True,
                 options=DBLLMOptions, summary="each 2-bit weight two scaled binaries; the scales distilled from FP16")
def quantize_dbllm(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """FDB on every Linear of the decoder blocks, DAD of the scales against a copy of the model, then plain
    Linears again. `steps` windows of the calibration text, cycled; the paper's schedule is not public."""
    options = DBLLMOptions(**spec.options)
    teacher = copy.deepcopy(model).eval()
    swaps = swap_in_dual_binary(model, spec.group_size)
    losses = distill_scales(model, teacher, swaps, calibration, options.steps, options.lr)
    fold_back(swaps)
    weights = sum(swap.linear.weight.numel() for swap in swaps)
    scales = sum(2 * swap.dual.scale_first.numel() for swap in swaps)
    return {"avg_bits": 2.0, "scale_bits": 16 * scales / weights, "quantized_linears": len(swaps),
            "distill_steps": options.steps, "distill_losses": losses}
