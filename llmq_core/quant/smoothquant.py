"""SmoothQuant (Xiao et al., 2023): quantize weights *and* activations, after moving the activations'
outliers into the weights.

LLM activations have a few channels with values 10-100x the rest, in every token; a per-token quantizer
then spends its range on them and rounds the other channels to zero. Weights have no such channels. For a
Linear y = x W^T, dividing input channel j by s_j and multiplying weight column j by s_j changes nothing in
full precision, and with

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(max over calibration tokens, and over the rows of every Linear reading X) the difficulty is shared:
alpha = 0.5 evens out the two ranges. 1/s is folded into the op before (the RMSNorm's weight for q/k/v and
for gate/up, v_proj's rows for o_proj), so smoothing costs nothing at inference. Then the weights are
quantized per output channel and each Linear's input per token, both symmetric absmax, the activations
dynamically (a scale per token at run time).

Where ours differs from the reference (mit-han-lab/smoothquant, `smooth_lm` and `quantize_llama_like`):
calibration uses our windows of the calibration text (the reference: 512 Pile samples of 512 tokens); the
reference smooths only the two norm-fed groups of a Llama block, and we also smooth o_proj into v_proj
(`smooth_o_proj`, on by default; under grouped-query attention one scale per value channel, the max over
the query heads that share it); query/key/value outputs are not quantized (the reference's default,
`quantize_bmm_input=False`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel

from llmq_core.models import decoder_layers, decoder_linears, mlp_input_norm
from llmq_core.quant.layerwise import fold_scales, linear_inputs, tie_to_previous
from llmq_core.quant.primitives import quantize_symmetric_absmax
from llmq_core.registry import QuantSpec, register_method

# (op before, the Linears reading its output) in a Llama block
def smooth_groups(block: torch.nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """The reference's two norm-fed groups of a Llama block; in a Gemma block the MLP reads pre_feedforward_layernorm."""
    return [("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            (mlp_input_norm(block), ("mlp.gate_proj", "mlp.up_proj"))]


O_PROJ_GROUP = ("self_attn.v_proj", ("self_attn.o_proj",))


class ActivationQuantizedLinear(torch.nn.Linear):
    """A Linear whose input is fake-quantized per token (symmetric absmax, `abits`) on every forward."""

    def __init__(self, linear: torch.nn.Linear, abits: int):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias, self.abits = linear.weight, linear.bias, abits

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_symmetric_absmax(inputs, self.abits), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, abits={self.abits}"


@torch.no_grad()
def activation_maxima(model: PreTrainedModel, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    """max |x_j| over the calibration tokens, per input channel of every decoder Linear (full precision)."""
    device = next(model.parameters()).device
    maxima: dict[str, torch.Tensor] = {}

    def observe(name: str, inputs: torch.Tensor) -> None:
        current = inputs.abs().amax(dim=0).float()
        maxima[name] = torch.maximum(maxima[name], current) if name in maxima else current

    with linear_inputs(decoder_linears(model), observe):
        for window in tqdm(calibration, desc="SmoothQuant activation maxima", leave=False):
            model(window.unsqueeze(0).to(device), use_cache=False)
    return maxima


def smoothing_scales(activation_maxima: torch.Tensor, weight_maxima: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), clamped away from 0 as in the reference."""
    return (activation_maxima.pow(alpha) / weight_maxima.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth_group(previous: torch.nn.Module, linears: list[torch.nn.Linear], input_maxima: torch.Tensor,
                 alpha: float, head_dim: int) -> torch.Tensor:
    """Fold s = max|X|^alpha / max|W|^(1-alpha) into `previous` (divide) and the Linears' columns (multiply).

    Returns s, one per output channel of `previous`."""
    width = previous.weight.shape[0]
    weight_maxima = torch.stack([linear.weight.abs().amax(dim=0).float() for linear in linears]).amax(dim=0)
    scales = smoothing_scales(tie_to_previous(input_maxima, width, head_dim, torch.amax),
                              tie_to_previous(weight_maxima, width, head_dim, torch.amax), alpha)
    fold_scales(previous, linears, scales, head_dim)
    return scales


@torch.no_grad()
def smooth_model(model: PreTrainedModel, calibration: torch.Tensor, alpha: float = 0.5,
                 smooth_o_proj: bool = True) -> None:
    """Smooth every block in place; the full-precision model computes the same function afterwards."""
    maxima = activation_maxima(model, calibration)
    for index, block in enumerate(decoder_layers(model)):
        modules = dict(block.named_modules())
        for previous, names in smooth_groups(block) + ([O_PROJ_GROUP] if smooth_o_proj else []):
            smooth_group(modules[previous], [modules[name] for name in names],
                         maxima[f"layers.{index}.{names[0]}"], alpha, block.self_attn.head_dim)


@dataclass(frozen=True)
class SmoothQuantOptions:
    smoothing: bool = True  # False: plain W8A8, the ablation without the scales
    alpha: float = 0.5  # the migration strength: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
    smooth_o_proj: bool = True  # also smooth o_proj's input into v_proj's rows (the reference does not)


@register_method("smoothquant", wbits=range(4, 9), abits=range(4, 9), notebook="ptq/smoothquant.ipynb",
                 paper_name="SmoothQuant", needs_calibration=True, options=SmoothQuantOptions, grouped=False,
                 always_symmetric=True,
                 summary="migrate activation outliers into the weights, then W and A per-channel / per-token")
@torch.no_grad()
def quantize_smoothquant(model: PreTrainedModel, spec: QuantSpec, calibration: torch.Tensor) -> dict:
    """Smooth (unless `smoothing` is off), then weights per channel and a per-token input quantizer on every Linear."""
    options = SmoothQuantOptions(**spec.options)
    if options.smoothing:
        smooth_model(model, calibration, options.alpha, options.smooth_o_proj)
    linears = decoder_linears(model)
    for block in decoder_layers(model):
        for name, module in list(block.named_modules()):
            if isinstance(module, torch.nn.Linear):
                module.weight.data = quantize_symmetric_absmax(module.weight.data, spec.grid_bits)
                parent, _, attribute = name.rpartition(".")
                setattr(block.get_submodule(parent), attribute, ActivationQuantizedLinear(module, spec.abits))
    count = sum(linear.weight.numel() for linear in linears.values())
    scale_bits = sum(16 * linear.out_features for linear in linears.values())  # one fp16 scale per row
    return {"avg_bits": spec.grid_bits + scale_bits / count, "quantized_linears": len(linears),
            "alpha": options.alpha if options.smoothing else None}
