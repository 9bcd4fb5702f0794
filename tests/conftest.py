"""Shared fixtures: a tiny random Llama for fast tests, and the real cached model for slow ones."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    """Two blocks, hidden 96 (not a multiple of the group size 64 used in tests), GQA 6/2 heads."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_gemma3() -> Gemma3ForCausalLM:
    """Gemma-3's block layout: sliding-window blocks (window 8) and a global one (block 1), norms around the attention
    and the MLP, (1 + weight) gains set away from 0, GQA 4/2 heads; random weights."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
                              max_position_embeddings=256, query_pre_attn_scalar=16)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # zeros at initialisation: a gain of exactly 1 would hide the offset
                parameter.uniform_(-0.5, 0.5)
    return model


@pytest.fixture
def tiny_qwen2() -> Qwen2ForCausalLM:
    """Qwen2's block layout: Llama's, with biases on q/k/v (a scale folded into v_proj's rows must divide its bias
    too), GQA 6/2 heads, untied LM head; random weights and biases."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("proj.bias"):  # zeros at initialisation would hide a bias left unscaled
                parameter.uniform_(-0.5, 0.5)
    return model


@pytest.fixture(scope="session")
def cached_model():
    """The embedded SmolLM2-135M from the asset cache (skipped when the cache is not filled)."""
    from llmq_core import assets
    from llmq_core.models import load_model

    if not assets.status().get("smollm2-135m"):
        pytest.skip("asset cache not filled: run `python -m llmq_core.assets fetch`")
    return load_model("smollm2-135m")
