"""A model larger than the GPU: quantized with one block on the compute device at a time, evaluated through
accelerate's device_map="auto". The CPU tests run the offload paths with the CPU as compute device; the GPU
tests show what they are for: the weights stay in CPU memory and the GPU holds about one block."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmq_core.errors import LlmqError
from llmq_core.eval.perplexity import perplexity
from llmq_core.config import RunConfig
from llmq_core.quantize import quantize_model
from llmq_core.methods import QuantSpec, get_method
from llmq_core.models import compute_device, is_offloaded, offload_to, place_for_evaluation, weight_bytes

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading to a GPU needs one")


def wide_llama(hidden: int = 128, seed: int = 0, blocks: int = 4) -> LlamaForCausalLM:
    """Four blocks; at hidden 512 their weights, not their activations, fill memory, as in a large model."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=blocks,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def quantize(model: LlamaForCausalLM, method: str, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    get_method(method).quantize(model, QuantSpec(wbits=3, group_size=64), calibration)
    return {name: p.detach().cpu() for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_an_offloaded_model_is_quantized_as_the_same_model_in_place(method):
    calibration = torch.randint(0, 256, (4, 64))
    in_place = quantize(wide_llama(), method, calibration)
    offloaded_model = offload_to(wide_llama(), "cpu")
    assert compute_device(offloaded_model) == torch.device("cpu")
    offloaded = quantize(offloaded_model, method, calibration)
    assert all(torch.equal(offloaded[name], weight) for name, weight in in_place.items())


@pytest.mark.parametrize("method, wbits, abits", [("smoothquant", 8, 8), ("dbllm", 2, 16)])
def test_a_method_that_runs_the_whole_model_refuses_an_offloaded_one(method, wbits, abits):
    with pytest.raises(LlmqError, match="larger than the GPU; use GPUs that hold it, or one of: .*gptq"):
        quantize_model(offload_to(wide_llama(), "cpu"), RunConfig(method=method, wbits=wbits, abits=abits))


def test_device_map_auto_evaluation_gives_the_same_perplexity():
    model, tokens = offload_to(wide_llama(), "cpu"), torch.randint(0, 256, (1, 4 * 64))
    before = perplexity(model, tokens, 64, progress=False)
    assert is_offloaded(model)
    placed = place_for_evaluation(model, max_memory={"cpu": "4GiB"})
    assert not is_offloaded(placed)  # evaluate_and_record places an offloaded model once
    assert perplexity(placed, tokens, 64, progress=False) == pytest.approx(before, rel=1e-6)


def offloaded_peak_bytes(method: str, blocks: int, calibration: torch.Tensor) -> tuple[int, LlamaForCausalLM]:
    """GPU memory that quantizing an offloaded model of `blocks` blocks adds at its peak, and the model."""
    model = offload_to(wide_llama(512, blocks=blocks), "cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    quantize(model, method, calibration)
    return torch.cuda.max_memory_allocated() - start, model


@needs_gpu
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_offloaded_quantization_keeps_the_weights_in_cpu_memory_and_one_block_on_the_gpu(method):
    calibration = torch.randint(0, 256, (4, 64))
    on_gpu = quantize(wide_llama(512).cuda(), method, calibration)
    offloaded_peak_bytes(method, 1, calibration)  # cuBLAS workspaces and CUDA graph pools: fixed, made once
    two_blocks, _ = offloaded_peak_bytes(method, 2, calibration)
    eight_blocks, model = offloaded_peak_bytes(method, 8, calibration)
    assert all(p.device.type == "cpu" for p in model.parameters())
    # six more blocks (56 MB here) would be on the GPU if the blocks stayed; the peak is that of one block
    assert eight_blocks - two_blocks < weight_bytes(model.model.layers[0])
    # the same kernels on the same inputs: the embedding and rotary tables were brought to the GPU to start
    offloaded = quantize(offload_to(wide_llama(512), "cuda"), method, calibration)
    assert all(torch.equal(offloaded[name], weight) for name, weight in on_gpu.items())


@needs_gpu
def test_device_map_auto_puts_what_does_not_fit_on_the_cpu_and_scores_the_same():
    model, tokens = wide_llama(512), torch.randint(0, 256, (1, 4 * 64))
    before = perplexity(model.cuda(), tokens, 64, progress=False)
    block_bytes = weight_bytes(model.model.layers[0])
    placed = place_for_evaluation(model.cpu(), max_memory={0: 3 * block_bytes, "cpu": "8GiB"})
    assert {"cpu", 0} <= set(placed.hf_device_map.values())
    assert perplexity(placed, tokens, 64, progress=False) == pytest.approx(before, rel=1e-4)
