"""PB-LLM against its defining properties: the paper's bit accounting (1.7 bits = 10 % salient at 8 bits), an
output error below binarizing every weight, the structure it claims (two values per row and group for the
binarized weights, the 8-bit grid for the salient ones), and widths that are not a multiple of 128."""

import pytest
import torch

from llmq_core.errors import LlmqError
from llmq_core.quant.pbllm import pbllm_quantize_linear, quantize_pbllm, salient_fraction_for_bits, salient_weight_mask
from llmq_core.quant.primitives import fake_quantize, find_scale_zero
from llmq_core.registry import QuantSpec, check_spec, get_method
from tests.test_gptq import correlated_inputs, layer_error, quantized_copy_logit_error
from tests.test_quip import hessian_of


def pbllm_weight(weight: torch.Tensor, inputs: torch.Tensor, fraction: float, **kwargs) -> tuple[torch.Tensor, int]:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    salient = pbllm_quantize_linear(linear, hessian_of(inputs), fraction, **kwargs)
    return linear.weight.data, salient


def test_the_paper_bits_give_its_salient_fractions():
    assert salient_fraction_for_bits(1.7) == pytest.approx(0.10)  # the paper's 10 %
    assert salient_fraction_for_bits(2.0) == pytest.approx(1 / 7)
    assert salient_fraction_for_bits(1.0) == 0.0


@pytest.mark.parametrize("bits", [1.7, 2.0])
def test_the_model_report_counts_bits_the_papers_way(tiny_llama, bits):
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    _, report, model = quantized_copy_logit_error(tiny_llama, quantize_pbllm, QuantSpec(bits, group_size=64), windows)
    fraction = report["salient_fraction"]
    assert report["quantized_linears"] == 14
    assert fraction == pytest.approx(salient_fraction_for_bits(bits), abs=0.005)  # rounded per group
    assert report["avg_bits"] == pytest.approx(8 * fraction + (1 - fraction))
    assert report["avg_bits"] == pytest.approx(bits, abs=0.04)


@pytest.mark.parametrize("cols", [256, 576])  # 576 = SmolLM2's width: a last group of 64 columns
def test_pbllm_beats_binarizing_every_weight(cols):
    weight = torch.randn(96, cols, generator=torch.Generator().manual_seed(0)) * 0.02
    inputs = correlated_inputs(2048, cols)
    plain = weight.mean(1, keepdim=True) + weight.sub(weight.mean(1, keepdim=True)).abs().mean(1, keepdim=True) \
        * torch.sign(weight - weight.mean(1, keepdim=True))
    everything_binarized, none = pbllm_weight(weight, inputs, 0.0)  # the same GPTQ feedback, no salient weights
    partly, salient = pbllm_weight(weight, inputs, 0.1)
    assert none == 0 and salient == pytest.approx(0.1 * weight.numel(), rel=0.01)
    assert layer_error(weight, everything_binarized, inputs) < layer_error(weight, plain, inputs)
    assert layer_error(weight, partly, inputs) < 0.8 * layer_error(weight, everything_binarized, inputs)


def test_binarized_weights_hold_two_values_per_row_and_group_and_salient_ones_lie_on_the_8_bit_grid():
    weight = torch.randn(32, 200, generator=torch.Generator().manual_seed(1)) * 0.02
    inputs = torch.randn(512, 200, generator=torch.Generator().manual_seed(2))
    quantized, _ = pbllm_weight(weight, inputs, 0.1, group_size=64)  # groups 64, 64, 64 and 8 wide
    scale, zero = find_scale_zero(weight, 8)
    on_grid = torch.isclose(fake_quantize(quantized, scale, zero, 8), quantized, rtol=0, atol=1e-8)
    assert int((~on_grid).sum()) >= 0.88 * weight.numel()  # 90 % binarized, a few of them on the grid by chance
    for start in range(0, 200, 64):
        for row in range(32):
            off_grid = quantized[row, start:start + 64][~on_grid[row, start:start + 64]]
            assert off_grid.unique().numel() <= 2  # every weight off the 8-bit grid is one of mean +- alpha


def test_the_salient_mask_takes_the_largest_saliency():
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    diagonal = torch.rand(64, generator=torch.Generator().manual_seed(4)) + 0.5
    mask = salient_weight_mask(weight, diagonal, 0.1)
    saliency = weight ** 2 / diagonal ** 2
    assert int(mask.sum()) == round(0.1 * weight.numel())
    assert float(saliency[mask].min()) >= float(saliency[~mask].max())
    by_magnitude = salient_weight_mask(weight, diagonal, 0.1, "magnitude")
    assert float(weight.abs()[by_magnitude].min()) >= float(weight.abs()[~by_magnitude].max())


def test_an_unknown_salient_metric_is_refused_before_any_work():
    with pytest.raises(LlmqError, match="salient_metric"):
        check_spec(get_method("pbllm"), QuantSpec(1.7, group_size=128, options={"salient_metric": "random"}))
    with pytest.raises(LlmqError, match="salient_search"):
        check_spec(get_method("billm"), QuantSpec(1.1, group_size=128, options={"salient_search": "random"}))
    check_spec(get_method("pbllm"), QuantSpec(1.7, group_size=128, options={"salient_metric": "magnitude"}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA graph path needs a GPU")
@pytest.mark.parametrize("group_size", [128, None])
def test_the_cuda_graph_column_loop_gives_the_eager_loops_weights(group_size):
    """As GPTQ's: one captured graph per group width (576 = 4 x 128 + 64 makes two) runs the eager loop's kernels."""
    torch.manual_seed(3)
    weight, inputs = torch.randn(256, 576).cuda(), correlated_inputs(2048, 576).cuda()
    graph, eager = (pbllm_weight(weight, inputs, 0.1, group_size=group_size, cuda_graph=graph) for graph in (True, False))
    assert torch.equal(graph[0], eager[0]) and graph[1] == eager[1]


def test_the_reference_constants_differ_from_ours_only_through_the_feedback_and_the_salient_zeros():
    """With independent inputs (a diagonal H: no feedback between columns) and no salient weights, fixing each group's
    mean and scale up front from the original weights is what choosing them on reaching the group does; with
    correlated inputs and salient weights the two readings part."""
    torch.manual_seed(0)
    weight = torch.randn(32, 256)
    diagonal = torch.diag(torch.linspace(0.5, 2.0, 256))

    def with_diagonal_hessian(**kwargs) -> torch.Tensor:
        linear = torch.nn.Linear(256, 32, bias=False)
        linear.weight.data = weight.clone()
        pbllm_quantize_linear(linear, diagonal, 0.0, **kwargs)
        return linear.weight.data
    assert torch.allclose(with_diagonal_hessian(), with_diagonal_hessian(reference_constants=True), atol=1e-6)
    inputs = correlated_inputs(2048, 256)
    ours, _ = pbllm_weight(weight, inputs, 0.1)
    reference, salient = pbllm_weight(weight, inputs, 0.1, reference_constants=True)
    assert salient == round(0.1 * 32 * 128) * 2 and not torch.allclose(ours, reference)
