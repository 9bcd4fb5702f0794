"""IR-QLoRA (Qin et al., 2024, arXiv 2402.05445): QLoRA with two information-retaining additions.

**Information Calibration Quantization (ICQ).** Before a block of 64 weights is NF-quantized,
a shift tau is subtracted, and added back after dequantization:

    W_hat = NF-dequant( NF-quant(W - tau) ) + tau,     tau = median(W) + lambda · absmax(W - median(W))
    lambda* = argmax over lambda in linspace(-tau_range·sigma, tau_range·sigma, 2·tau_n + 1)  of  H(codes)

H is the Shannon entropy of the block's histogram over the 2^k codes: a shift that spreads the
weights over more codes keeps more information of W. sigma = 1 / Phi^-1(0.9677083) as in the
reference (the NF4 code's outermost quantile). The taus are stored in 8 bits as the reference
does: bitsandbytes' dynamic code, one absmax per `blocksize2` (256) taus.
Ours adds tau = 0 (plain NF) as the first candidate, so the entropy never falls below plain NF's.

**Information Elastic Connection (IEC).** Parameter-free transforms around the adapter's two
matrices let the r-dimensional bottleneck see the whole input and reach the whole output:

    h = A x + beta_A · groupmean_r(x)          (x averaged in r groups of d_in / r)
    y = B h + beta_B · repeat_{d_out/r}(h)     (each h_i repeated over d_out / r outputs)

The reference code scales each transform by a scalar, initialised to 0 and trained with the
adapter (2 per layer); so do we, which keeps the model's output unchanged before training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.lora.normalfloat import (BLOCKSIZE, code_entropy, entropy_bits, normalfloat_code, normalfloat_roundtrip,
                                        quantize_blockwise, roundtrip_8bit)
from llmq_core.lora.qlora import (FinetuneOptions, attach_lora, count_trainable_parameters, load_normalfloat_model,
                                  lora_settings)
from llmq_core.models import decoder_linears, load_model
from llmq_core.registry import QuantSpec, register_method

@dataclass(frozen=True)
class IRQLoRAOptions(FinetuneOptions):
    """QLoRA's, and ICQ's search as the seed's usage gives it: --tau_range 0.1 --tau_n 100 --blocksize 256."""

    tau_range: float = 0.1  # the search's lambda spans +-tau_range sigma
    tau_n: int = 100  # candidates on each side
    blocksize2: int = 256  # the stored taus' 8-bit blocks


SIGMA = 1 / float(torch.special.ndtri(torch.tensor(0.9677083, dtype=torch.float64)))
BLOCKS_PER_CHUNK = 2048  # blocks searched at once, with all their candidates: ~60 MB


def sorted_block_entropy(sorted_blocks: torch.Tensor, tau: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The code entropy of each block (rows, sorted ascending) quantized after subtracting each shift of
    `tau` (rows, candidates); returns (rows, candidates).

    Equal to code_entropy(quantize_blockwise(blocks - tau)) but without quantizing every weight:
    absmax(w - tau) comes from the block's min and max, and the count of each code is a difference
    of binary searches of the code's midpoints, mapped back to the weights' scale, in the sorted block.
    """
    rows, length = sorted_blocks.shape
    absmax = torch.maximum(sorted_blocks[:, -1:] - tau, tau - sorted_blocks[:, :1]).clamp_min(torch.finfo(torch.float32).tiny)
    midpoints = ((code[1:] + code[:-1]) / 2).to(sorted_blocks)
    thresholds = tau.unsqueeze(-1) + midpoints * absmax.unsqueeze(-1)  # (rows, candidates, codes - 1)
    at_or_below = torch.searchsorted(sorted_blocks, thresholds.flatten(1), right=True).view(thresholds.shape)
    edges = torch.nn.functional.pad(at_or_below, (1, 0), value=0)
    edges = torch.nn.functional.pad(edges, (0, 1), value=length)
    return entropy_bits(edges.diff(dim=-1).float() / length)


@torch.no_grad()
def search_information_shift(weight: torch.Tensor, bits: int, tau_range: float = 0.1, tau_n: int = 100,
                             blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """ICQ: the shift tau of each block of `blocksize` weights (row-major) that maximises its code entropy.

    The candidates are tau = 0 (plain NF; kept on ties) and the reference's 2 tau_n + 1 shifts."""
    code = normalfloat_code(bits)
    factors = torch.linspace(-tau_range * SIGMA, tau_range * SIGMA, 2 * tau_n + 1, device=weight.device)
    taus = []
    for blocks in weight.reshape(-1, blocksize).float().split(BLOCKS_PER_CHUNK):
        sorted_blocks = blocks.sort(dim=1).values
        median = blocks.median(dim=1, keepdim=True).values
        spread = (blocks - median).abs().amax(dim=1, keepdim=True)
        candidates = torch.cat([torch.zeros_like(median), median + factors * spread], dim=1)
        best = sorted_block_entropy(sorted_blocks, candidates, code).argmax(dim=1, keepdim=True)  # the first maximum
        taus.append(candidates.gather(1, best).squeeze(1))
    return torch.cat(taus)


def store_shifts(tau: torch.Tensor, blocksize2: int = 256) -> torch.Tensor:
    """The taus as they come back from their 8-bit storage (dynamic code, one absmax per `blocksize2`)."""
    return roundtrip_8bit(tau, blocksize2)


def block_shift_matrix(tau: torch.Tensor, weight_shape: torch.Size, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """tau of each block, as a (d_out, d_in / blocksize) matrix: blocks never straddle two rows."""
    rows, columns = weight_shape
    if columns % blocksize:
        raise ValueError(f"ICQ needs d_in divisible by {blocksize}; this layer has {columns}")
    return tau.view(rows, columns // blocksize)


def add_block_shift(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an NF4 layer storing W - tau: adds tau's part, x summed per block times tau."""
    x = inputs[0]
    block_sums = x.unflatten(-1, (-1, BLOCKSIZE)).sum(-1)
    return output + (block_sums.to(module.icq_shift.dtype) @ module.icq_shift.T).to(output.dtype)


@torch.no_grad()
def calibrate_information(model: PreTrainedModel, full_precision: dict[str, torch.Tensor], bits: int,
                          tau_range: float, tau_n: int, blocksize2: int) -> dict:
    """ICQ on every linear layer of the blocks: NF-quantize W - tau from the full-precision weights."""
    import bitsandbytes as bnb
    from tqdm import tqdm

    code, entropy_gain, blocks = normalfloat_code(bits), 0.0, 0
    for name, linear in tqdm(decoder_linears(model).items(), desc="ICQ search", leave=False):
        weight = full_precision[name].to(linear.weight.device).float()
        tau = store_shifts(search_information_shift(weight, bits, tau_range, tau_n), blocksize2)
        shift = block_shift_matrix(tau, weight.shape)
        expanded_shift = shift.repeat_interleave(BLOCKSIZE, dim=1)
        shifted = weight - expanded_shift
        if isinstance(linear, bnb.nn.Linear4bit):
            linear.weight = bnb.nn.Params4bit(shifted.to(linear.compute_dtype or torch.float32), requires_grad=False,
                                              quant_type="nf4", compress_statistics=True,
                                              blocksize=BLOCKSIZE).to(weight.device)
            linear.register_buffer("icq_shift", shift.to(linear.compute_dtype or torch.float32))
            linear.register_forward_hook(add_block_shift)
        else:
            linear.weight.copy_(normalfloat_roundtrip(shifted, bits) + expanded_shift)
        plain = code_entropy(quantize_blockwise(weight, code, BLOCKSIZE)[0], 2 ** bits)
        calibrated = code_entropy(quantize_blockwise(shifted, code, BLOCKSIZE)[0], 2 ** bits)
        entropy_gain += float((calibrated - plain).sum())
        blocks += plain.numel()
    return {"icq_mean_entropy_gain_bits": entropy_gain / max(blocks, 1)}


def elastic_down(module: torch.nn.Linear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """IEC around A (a forward hook): A x + beta · (x averaged in r groups)."""
    return output + module.elastic_scale * inputs[0].unflatten(-1, (module.out_features, -1)).mean(-1)


def elastic_up(module: torch.nn.Linear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """IEC around B (a forward hook): B h + beta · (each h_i repeated over d_out / r outputs).

    beta scales h before the repeat, not after: the product is the same, but beta's gradient then needs only the
    r-wide h, which B keeps anyway, where scaling the repeat would keep a d_out-wide copy (in the adapters' fp32)
    for every adapted layer, about a third more activations per training step."""
    return output + (module.elastic_scale * inputs[0]).repeat_interleave(module.out_features // module.in_features, -1)


def attach_elastic_connections(model: PreTrainedModel) -> None:
    """IEC on every LoRA adapter of a peft model; beta lives on A and B, so that peft saves it with them."""
    from peft.tuners.lora import LoraLayer

    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            for projections, hook in ((layer.lora_A, elastic_down), (layer.lora_B, elastic_up)):
                for projection in projections.values():
                    if max(projection.in_features, projection.out_features) % min(projection.in_features,
                                                                                   projection.out_features):
                        raise ValueError(f"IEC needs the layer's widths divisible by r; got {projection}")
                    # (1, 1), not (1,): peft warns on save of a 1-D lora_A / B tensor (an ungathered shard)
                    projection.elastic_scale = torch.nn.Parameter(projection.weight.new_zeros(1, 1))
                    projection.register_forward_hook(hook)


@register_method("irqlora", wbits=(4, 3, 2), notebook="lora_ft/irqlora.ipynb", paper_name="IR-QLoRA", track="lora_ft",
                 grouped=False, options=IRQLoRAOptions,
                 summary="QLoRA with entropy-calibrated NF blocks (ICQ) and elastic adapter connections (IEC)")
def prepare_irqlora(model_name: str, spec: QuantSpec, device: str, dtype: torch.dtype
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """The NF-k base re-quantized with ICQ's shifts, with LoRA adapters and IEC, ready to fine-tune."""
    options = IRQLoRAOptions(**spec.options)
    model, tokenizer = load_normalfloat_model(model_name, spec.grid_bits, device, dtype)
    full_precision_model, _ = load_model(model_name, "cpu", dtype)  # ICQ searches the unquantized weights
    full_precision = {name: linear.weight.detach() for name, linear in decoder_linears(full_precision_model).items()}
    report = calibrate_information(model, full_precision, spec.grid_bits, options.tau_range, options.tau_n,
                                   options.blocksize2)
    del full_precision_model, full_precision
    model = attach_lora(model, lora_settings(options))
    attach_elastic_connections(model)
    return model, tokenizer, {**report, "trainable_parameters": count_trainable_parameters(model)}
