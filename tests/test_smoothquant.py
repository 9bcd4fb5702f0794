"""SmoothQuant against its defining properties: smoothing leaves the full-precision model unchanged while
flattening the activations' outlier channels, and W8A8 keeps the embedded model's perplexity."""

import pytest
import torch

from llmq_core.errors import LlmqError
from llmq_core.methods import QuantSpec, check_spec, get_method
from llmq_core.models import mlp_input_norm, norm_gain_offset
from llmq_core.quant.primitives import quantize_symmetric_absmax
from llmq_core.quant.smoothquant import ActivationQuantizedLinear, activation_maxima, quantize_smoothquant, smooth_model


def with_outlier_channels(model: torch.nn.Module) -> torch.nn.Module:
    """A few input channels 30x larger, as in trained LLMs (a random model has none to smooth)."""
    for block in model.model.layers:
        for norm in (block.input_layernorm, block.get_submodule(mlp_input_norm(block))):
            offset = norm_gain_offset(norm)  # scale the gain, which is 1 + weight in Gemma's norms
            norm.weight.data[[3, 40, 57]] = (norm.weight.data[[3, 40, 57]] + offset) * 30 - offset
        block.self_attn.v_proj.weight.data[[5, 20]] *= 30  # o_proj's input, through the value heads
    return model


@pytest.mark.parametrize("architecture", ["tiny_llama", "tiny_gemma3", "tiny_qwen2"])
@pytest.mark.parametrize("smooth_o_proj", [True, False])
def test_smoothing_leaves_the_full_precision_outputs_unchanged(architecture, smooth_o_proj, request):
    model = with_outlier_channels(request.getfixturevalue(architecture))
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(windows).logits
    smooth_model(model, windows, alpha=0.5, smooth_o_proj=smooth_o_proj)
    with torch.no_grad():
        smoothed = model(windows).logits
    assert torch.allclose(smoothed, reference, atol=1e-4 * reference.abs().max())


@pytest.mark.parametrize("name", ["self_attn.q_proj", "mlp.gate_proj", "self_attn.o_proj"])
def test_smoothing_flattens_the_outlier_channels(tiny_llama, name):
    model = with_outlier_channels(tiny_llama)
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))

    def outlier_ratio() -> float:  # the largest channel's max |x| over the median channel's
        maxima = activation_maxima(model, windows)[f"layers.0.{name}"]
        return float(maxima.max() / maxima.median())

    before = outlier_ratio()
    smooth_model(model, windows)
    assert outlier_ratio() < before / 3


def test_w8a8_quantizes_weights_per_channel_and_inputs_per_token(tiny_llama):
    windows = torch.randint(0, 128, (2, 16))
    report = quantize_smoothquant(tiny_llama, QuantSpec(8, 8), windows)
    assert report["quantized_linears"] == 14 and report["alpha"] == 0.5
    q_proj = tiny_llama.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, ActivationQuantizedLinear) and q_proj.abits == 8
    for row in q_proj.weight:
        assert row.unique().numel() <= 255  # symmetric: -127 .. 127 steps
    seen = []
    handle = q_proj.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        tiny_llama(windows)
    handle.remove()
    x = seen[0].reshape(-1, q_proj.in_features)
    assert torch.allclose(q_proj(seen[0]).reshape(-1, q_proj.out_features),
                          quantize_symmetric_absmax(x, 8) @ q_proj.weight.T, atol=1e-5)


def test_the_symmetric_quantizer_keeps_each_rows_largest_value_and_uses_2_to_the_b_minus_1_steps():
    values = torch.randn(6, 100)
    quantized = quantize_symmetric_absmax(values, 4)
    assert torch.allclose(quantized.abs().amax(1), values.abs().amax(1))
    steps = quantized / (values.abs().amax(1, keepdim=True) / 7)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 7 + 1e-4


@pytest.mark.parametrize("spec, message", [(QuantSpec(8), "give abits"), (QuantSpec(8, 8, 128), "one scale per output")])
def test_smoothquant_refuses_missing_abits_and_group_sizes(spec, message):
    with pytest.raises(LlmqError, match=message):
        check_spec(get_method("smoothquant"), spec)


def test_w8a8_perplexity_on_the_embedded_model_is_within_5_percent_of_fp16(cached_model):
    from llmq_core.data import calibration_windows, eval_tokens
    from llmq_core.eval.perplexity import perplexity
    from llmq_core.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    tokens = eval_tokens("enwiki-excerpt", tokenizer, "offline", 512, 0)
    fp16 = perplexity(model, tokens, 512, 2, progress=False)
    quantize_smoothquant(model, QuantSpec(8, 8), calibration_windows("enwiki-excerpt", tokenizer, 4, 512, "offline", 0))
    assert perplexity(model, tokens, 512, 2, progress=False) < 1.05 * fp16
