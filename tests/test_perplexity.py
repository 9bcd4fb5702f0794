import math

import pytest
import torch

from llmq_core.eval.perplexity import perplexity
from llmq_core.models import compile_blocks


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
    """Both blocks run one compiled graph (a recompilation per block would raise), with eager's result."""
    model = tiny_llama.cuda()
    tokens = torch.randint(0, 128, (1, 4 * 64))
    eager = perplexity(model, tokens, seqlen=64, batch_size=2, progress=False)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = perplexity(compile_blocks(model), tokens, seqlen=64, batch_size=2, progress=False)
    assert math.isclose(compiled, eager, rel_tol=1e-4)
