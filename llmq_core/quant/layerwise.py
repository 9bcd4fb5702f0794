"""Block-by-block calibration, shared by the methods that look at activations (GPTQ, AWQ, QuIP, SmoothQuant).

The calibration windows are run through the embeddings once; their hidden states at the input of
block 0 are kept (with the keyword arguments the block receives: attention mask, rotary position
embeddings). Then each block in turn is calibrated on its inputs, quantized, and run again so that
the next block sees the outputs of the *quantized* block, as in GPTQ's `llama_sequential`. Only one
block's activations are alive at a time, so the full model never needs the memory of all of them.

A model larger than the GPU stays in CPU memory (`models.load_model(..., offload=True)`): the blocks
are then calibrated and quantized on its compute device one at a time (`block_on`), as GPTQ's
reference does for LLaMA-65B, and the calibration activations live on that device throughout.
"""

from __future__ import annotations

import itertools
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch
from transformers import PreTrainedModel

from llmq_core.models import compute_device, decoder_layers, norm_gain_offset


class _StopForward(Exception):
    """Raised once a window's inputs are captured: the rest of the model (its norm, the LM head) is not needed."""


class _BlockInputRecorder(torch.nn.Module):
    """Stands in for a decoder block while the inputs are captured: records what the block would receive and
    passes the hidden states on unchanged, so that no block computes anything."""

    def __init__(self, block: torch.nn.Module, record: Callable[[torch.Tensor, dict[str, Any]], None]):
        super().__init__()
        self.record = record
        # some decoders pick a block's mask and rotary tables by this attribute (Qwen2 in transformers 4)
        self.attention_type = getattr(block, "attention_type", None)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.record(hidden_states, kwargs)
        return hidden_states


def home_device(module: torch.nn.Module) -> torch.device | None:
    """Where the module's weights (or buffers, for rotary tables) live; None if it holds no tensor."""
    return next((tensor.device for tensor in itertools.chain(module.parameters(), module.buffers())), None)


@contextmanager
def block_on(module: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """`module` on `device` for its turn, then back where its weights live (nothing moves if they are there)."""
    home = home_device(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


@torch.no_grad()
def capture_block_inputs(model: PreTrainedModel, windows: torch.Tensor
                         ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Hidden states (n, seqlen, hidden) entering block 0 for each window, and each block's keyword arguments,
    computed on the model's compute device: for an offloaded model, what surrounds the blocks (the embedding,
    the rotary tables) is brought there for this, so that its blocks see what they would see on it.

    The keyword arguments (causal mask, position embeddings) are the same for every window of one length, so
    those of the first window serve all of them. They are per block because they can differ between blocks:
    Gemma-3 alternates sliding-window blocks (a banded mask, local rotary tables) with global ones.
    """
    device, blocks = compute_device(model), decoder_layers(model)
    around_blocks = [child for child in model.get_decoder().children() if child is not blocks and home_device(child)]
    captured: list[torch.Tensor] = []
    block_kwargs: list[dict[str, Any]] = [{} for _ in blocks]
    real_blocks = list(blocks)

    def recorder(index: int) -> _BlockInputRecorder:
        def record(hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
            if index == 0:
                captured.append(hidden)
            if not block_kwargs[-1]:  # the first window: every block's arguments, then stop before the LM head
                block_kwargs[index].update(kwargs)
            if index == len(blocks) - 1 or block_kwargs[-1]:
                raise _StopForward
        return _BlockInputRecorder(real_blocks[index], record)

    with ExitStack() as held:
        for child in around_blocks:
            held.enter_context(block_on(child, device))
        try:
            for index in range(len(blocks)):
                blocks[index] = recorder(index)
            for window in windows:
                try:
                    model(window.unsqueeze(0).to(device), use_cache=False)
                except _StopForward:
                    pass
        finally:
            for index, block in enumerate(real_blocks):
                blocks[index] = block
    return torch.cat(captured), block_kwargs


@torch.no_grad()
def run_block(block: torch.nn.Module, inputs: torch.Tensor, block_kwargs: dict[str, Any]) -> torch.Tensor:
    """The block's outputs for each calibration window, one window at a time (bounded memory)."""
    outputs = torch.empty_like(inputs)
    for i in range(inputs.shape[0]):
        out = block(inputs[i:i + 1], **block_kwargs)
        outputs[i:i + 1] = out[0] if isinstance(out, tuple) else out
    return outputs


@contextmanager
def linear_inputs(linears: dict[str, torch.nn.Linear],
                  observe: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call `observe(name, x)` with the input x (tokens, in_features) of each Linear on every forward."""
    def hook(name: str) -> Callable:
        return lambda module, args: observe(name, args[0].reshape(-1, args[0].shape[-1]))

    handles = [linear.register_forward_pre_hook(hook(name)) for name, linear in linears.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def forward_in_chunks(module: torch.nn.Module, inputs: torch.Tensor, kwargs: dict[str, Any] | None = None,
                      chunk: int = 16) -> torch.Tensor:
    """`module(inputs[i:i + chunk], **kwargs)` over the calibration windows, concatenated: for searches that
    run a submodule (attention, MLP, a Linear) many times, where one window at a time would be slow."""
    outputs = []
    for start in range(0, inputs.shape[0], chunk):
        out = module(inputs[start:start + chunk], **(kwargs or {}))
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outputs)


def block_linears(block: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linears of one decoder block by their path inside it (self_attn.q_proj, mlp.down_proj, ...)."""
    return {name: module for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)}


@torch.no_grad()
def linear_calibration_inputs(model: PreTrainedModel, windows: torch.Tensor, block_index: int,
                              name: str) -> torch.Tensor:
    """The inputs (tokens, in_features) that one Linear of one block sees on the calibration windows,
    with the model as it is: for a worked example on a single layer."""
    inputs, block_kwargs = capture_block_inputs(model, windows)
    for index, block in enumerate(decoder_layers(model)[:block_index]):
        inputs = run_block(block, inputs, block_kwargs[index])
    block = decoder_layers(model)[block_index]
    seen: list[torch.Tensor] = []
    with linear_inputs({name: block_linears(block)[name]}, lambda _, x: seen.append(x)):
        run_block(block, inputs, block_kwargs[block_index])
    return torch.cat(seen)


def tie_to_previous(values: torch.Tensor, previous_width: int, head_dim: int,
                    reduce: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Per input channel of a Linear -> per output channel of the op before it, reduced over the tie.

    A scale folded into the previous op must be the same for every input channel that op's output
    channel feeds. Under grouped-query attention o_proj reads (heads x head_dim) channels made from fewer
    value heads; the query heads of one group are adjacent, so channel (kv, rep, d) is value channel (kv, d)."""
    if values.numel() == previous_width:
        return values
    return reduce(values.view(previous_width // head_dim, -1, head_dim), dim=1).reshape(-1)


def expand_to_inputs(scales: torch.Tensor, input_width: int, head_dim: int) -> torch.Tensor:
    """The inverse map of `tie_to_previous`: one value per input channel of the Linear."""
    if scales.numel() == input_width:
        return scales
    heads = scales.view(-1, 1, head_dim)
    return heads.expand(-1, input_width // scales.numel(), head_dim).reshape(-1)


@torch.no_grad()
def fold_scales(previous: torch.nn.Module, linears: list[torch.nn.Linear], scales: torch.Tensor,
                head_dim: int) -> torch.Tensor:
    """Divide the previous op's output by `scales` and multiply the Linears' input columns by them; the
    full-precision function is unchanged. Returns the per-input-channel scales."""
    per_input = expand_to_inputs(scales, linears[0].in_features, head_dim)
    if isinstance(previous, torch.nn.Linear):  # its output rows, and their biases (Qwen2's v_proj has some)
        previous.weight.data = (previous.weight.float() / scales[:, None]).to(previous.weight.dtype)
        if previous.bias is not None:
            previous.bias.data = (previous.bias.float() / scales).to(previous.bias.dtype)
    else:  # an RMSNorm's elementwise gain: its weight (Llama), or 1 + its weight (Gemma)
        offset = norm_gain_offset(previous)
        previous.weight.data = ((previous.weight.float() + offset) / scales - offset).to(previous.weight.dtype)
    for linear in linears:
        linear.weight.data = (linear.weight.float() * per_input).to(linear.weight.dtype)
    return per_input
