"""AWQ against its defining properties: scaling is exact in full precision (GQA included), the searched
scales never do worse than alpha = 0 (plain RTN) on the judged output, and the whole method beats RTN."""

import pytest
import torch

from llmq_core.methods import QuantSpec
from llmq_core.quant.awq import column_groups, scale_groups, output_mse, quantize_awq, search_clipping, search_scales
from llmq_core.quant.layerwise import block_linears, capture_block_inputs, fold_scales, forward_in_chunks, linear_inputs
from llmq_core.quant.primitives import quantize_weight_groupwise
from llmq_core.quant.rtn import quantize_rtn
from tests.test_gptq import quantized_copy_logit_error
from tests.test_smoothquant import with_outlier_channels


def block_features(model, windows):
    """Block 0, its inputs and kwargs, and the inputs of each group's first Linear."""
    inputs, kwargs = capture_block_inputs(model, windows)
    block, kwargs = model.model.layers[0], kwargs[0]
    seen = {group.linears[0]: [] for group in scale_groups(block)}
    with linear_inputs({name: block_linears(block)[name] for name in seen}, lambda name, x: seen[name].append(x)):
        forward_in_chunks(block, inputs, kwargs)
    return block, inputs, kwargs, {name: torch.cat(x).view(*inputs.shape[:2], -1) for name, x in seen.items()}


@pytest.mark.parametrize("architecture", ["tiny_llama", "tiny_gemma3", "tiny_qwen2"])
@pytest.mark.parametrize("group_index", range(4), ids=["self_attn", "o_proj", "mlp", "down_proj"])
def test_applied_scales_reproduce_the_searched_error_which_is_at_most_rtns(architecture, group_index, request):
    model = with_outlier_channels(request.getfixturevalue(architecture))
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    block, inputs, kwargs, features = block_features(model, windows)
    group = scale_groups(block)[group_index]
    modules = dict(block.named_modules())
    linears = [modules[name] for name in group.linears]
    module_kwargs = kwargs if group.inspect == "self_attn" else {}
    x = features[group.linears[0]]
    reference = forward_in_chunks(modules[group.inspect], x, module_kwargs).float()
    scales, losses = search_scales(modules[group.inspect], linears, x, module_kwargs, 3, 32, False,
                                   modules[group.previous].weight.shape[0], block.self_attn.head_dim)
    per_input = fold_scales(modules[group.previous], linears, scales, block.self_attn.head_dim)
    # full precision: the judged module computes the same function on the rescaled inputs
    assert torch.allclose(forward_in_chunks(modules[group.inspect], x / per_input, module_kwargs), reference,
                          atol=1e-4 * reference.abs().max())
    for linear in linears:
        linear.weight.data = quantize_weight_groupwise(linear.weight.data, 3, 32)
    searched = output_mse(modules[group.inspect], x / per_input, module_kwargs, reference)
    assert searched == pytest.approx(min(losses), rel=1e-3)
    assert searched <= losses[0]  # losses[0]: alpha = 0, scales all 1, i.e. RTN


def test_the_gqa_pair_ties_scales_across_the_heads_of_one_value_head(tiny_llama):
    block = tiny_llama.model.layers[0]  # 6 query heads on 2 value heads, head_dim 16
    scales = torch.rand(32) + 0.5
    per_input = fold_scales(block.self_attn.v_proj, [block.self_attn.o_proj], scales, 16)
    assert per_input.shape == (96,)
    assert torch.equal(per_input.view(2, 3, 16), scales.view(2, 1, 16).expand(2, 3, 16))


def test_clipping_bounds_are_per_row_and_group_with_a_shorter_last_group():
    weight, inputs = torch.randn(8, 96), torch.randn(600, 96)
    assert column_groups(96, 64) == [(0, 64), (64, 96)]
    bounds = search_clipping(weight, inputs, 3, 64)
    for start, stop in column_groups(96, 64):
        group = bounds[:, start:stop]
        assert torch.equal(group, group[:, :1].expand_as(group))
        assert (group[:, 0] <= weight[:, start:stop].abs().amax(1) + 1e-6).all()
        assert (group[:, 0] >= 0.55 * weight[:, start:stop].abs().amax(1) - 1e-6).all()


def test_awq_block_output_error_is_below_rtns(cached_model):
    from llmq_core.data import calibration_windows
    from llmq_core.models import load_model

    windows = calibration_windows("enwiki-excerpt", load_model("smollm2-135m")[1], 4, 256, "offline", 0)
    errors = {}
    for name, quantize in (("rtn", quantize_rtn), ("awq", quantize_awq)):
        model, _ = load_model("smollm2-135m")
        model.model.layers = model.model.layers[:2]
        inputs, kwargs = capture_block_inputs(model, windows)
        reference = forward_in_chunks(model.model.layers[1],
                                      forward_in_chunks(model.model.layers[0], inputs, kwargs[0]), kwargs[1])
        quantize(model, QuantSpec(3, group_size=128), windows)
        outputs = forward_in_chunks(model.model.layers[1],
                                    forward_in_chunks(model.model.layers[0], inputs, kwargs[0]), kwargs[1])
        errors[name] = float((outputs - reference).pow(2).mean())
    assert errors["awq"] < 0.8 * errors["rtn"]


def test_awq_on_a_model_keeps_the_grid_and_beats_rtn(tiny_llama):
    model = with_outlier_channels(tiny_llama)
    windows = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    rtn_error, _, _ = quantized_copy_logit_error(model, quantize_rtn, QuantSpec(3, group_size=64), windows)
    awq_error, report, quantized = quantized_copy_logit_error(model, quantize_awq, QuantSpec(3, group_size=64), windows)
    assert report["quantized_linears"] == 14 and set(report["awq_mean_alpha"]) == {"self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj"}
    for row in quantized.model.layers[0].mlp.gate_proj.weight:  # hidden 96 = 64 + a last group of 32
        assert row[:64].unique().numel() <= 8 and row[64:].unique().numel() <= 8
    assert awq_error < rtn_error
