import math

import pytest
import torch

from llmq_core.eval.perplexity import perplexity
from llmq_core.models import blocks_compile_safely, compiled_blocks


def test_matches_transformers_loss_on_each_window(tiny_llama):
    """Independent computation: the mean of HF's own causal-LM loss over the same windows."""
    torch.manual_seed(1)
    tokens = torch.randint(0, 128, (1, 5 * 64 + 17))  # the tail of 17 tokens is dropped
    with torch.no_grad():
        losses = [tiny_llama(window, labels=window).loss for window in tokens[:, :320].view(5, 1, 64)]
    expected = math.exp(torch.stack(losses).mean().item())
    assert math.isclose(perplexity(tiny_llama, tokens, seqlen=64, progress=False), expected, rel_tol=1e-5)
    assert math.isclose(perplexity(tiny_llama, tokens, seqlen=64, batch_size=2, progress=False), expected, rel_tol=1e-5)


def test_max_windows_scores_only_the_first_windows(tiny_llama):
    tokens = torch.randint(0, 128, (1, 4 * 32))
    first_two = perplexity(tiny_llama, tokens[:, :64], seqlen=32, progress=False)
    assert math.isclose(perplexity(tiny_llama, tokens, seqlen=32, max_windows=2, progress=False), first_two,
                        rel_tol=1e-6)


def test_uniform_model_has_perplexity_equal_to_vocabulary(tiny_llama):
    """With a zero output layer every token has probability 1/V, so the perplexity is exactly V."""
    with torch.no_grad():
        tiny_llama.lm_head.weight.zero_()
    tokens = torch.randint(0, 128, (1, 256))
    assert math.isclose(perplexity(tiny_llama, tokens, seqlen=64, progress=False), 128, rel_tol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiling pays only on a GPU")
def test_compiled_blocks_on_a_gpu_give_the_same_perplexity_from_one_graph(tiny_llama):
    """Both blocks, and a second call, run one compiled graph (a recompilation would raise), with eager's result."""
    model = tiny_llama.cuda()
    eager_blocks = list(model.model.layers)
    tokens = torch.randint(0, 128, (1, 4 * 64))
    eager = perplexity(model, tokens, seqlen=64, batch_size=2, compile_blocks=False, progress=False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = [perplexity(model, tokens, seqlen=64, batch_size=2, compile_blocks=True, progress=False)
                    for _ in range(2)]
    assert compiled == pytest.approx([eager, eager], rel=1e-4)
    assert list(model.model.layers) == eager_blocks  # eager again


def test_only_blocks_of_torch_and_transformers_modules_on_one_device_are_compiled(tiny_llama):
    from llmq_core.quant.smoothquant import ActivationQuantizedLinear

    blocks = list(tiny_llama.model.layers)
    with compiled_blocks(tiny_llama) as compiling:
        assert compiling and all(isinstance(block, torch._dynamo.eval_frame.OptimizedModule)
                                 for block in tiny_llama.model.layers)
    assert list(tiny_llama.model.layers) == blocks
    tiny_llama.hf_device_map = {"": 0}  # placed by accelerate
    assert not blocks_compile_safely(tiny_llama)
    del tiny_llama.hf_device_map
    attention = tiny_llama.model.layers[1].self_attn
    plain, attention.q_proj = attention.q_proj, ActivationQuantizedLinear(attention.q_proj, abits=8)
    assert not blocks_compile_safely(tiny_llama)  # a quantizer's own module, in any block
    attention.q_proj = plain
    assert blocks_compile_safely(tiny_llama)
