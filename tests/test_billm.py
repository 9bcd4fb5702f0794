"""BiLLM against its defining properties: on the same layer and inputs its output error is below plain
sign-and-mean binarization's, each part of a block really holds the few values it claims, and widths
that are not a multiple of the block size work."""

import pytest
import torch

from llmq_core.quant.billm import (billm_binarize_block, billm_quantize_linear, binarization_error, binarize_rows,
                                   quantize_billm, residual_binarization_error, salient_column_mask, split_errors)
from llmq_core.registry import QuantSpec
from tests.test_gptq import correlated_inputs, layer_error, quantized_copy_logit_error
from tests.test_quip import hessian_of


def heavy_tailed_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Bell-shaped weights with a few large columns, as LLM weights have."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * 0.02
    weight[:, torch.randperm(cols, generator=generator)[:cols // 30]] *= 6
    return weight


def billm_weight(weight: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    salient = billm_quantize_linear(linear, hessian_of(inputs))
    return linear.weight.data, salient


def test_binarize_rows_is_mean_plus_scaled_sign():
    weight = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    mask = torch.tensor([[True, True, True, False]])
    # mean 2, mean |w - 2| = 2/3: 1 -> 2 - 2/3, 2 -> 2 (sign 0), 3 -> 2 + 2/3; the unmasked entry is 0
    expected = torch.tensor([[2 - 2 / 3, 2.0, 2 + 2 / 3, 0.0]])
    torch.testing.assert_close(binarize_rows(weight, mask), expected)


@pytest.mark.parametrize("cols", [256, 576])  # 576 = SmolLM2's width: a last block of 64 columns
def test_billm_beats_sign_and_mean_binarization(cols):
    # Gaussian weights and inputs with a few large, correlated channels (LLM activations have such outliers):
    # the Hessian sends the second bit where the output needs it
    weight = torch.randn(96, cols, generator=torch.Generator().manual_seed(0)) * 0.02
    inputs = correlated_inputs(2048, cols)
    plain = weight.abs().mean(1, keepdim=True) * torch.sign(weight)  # XNOR-style: alpha = mean |w| per row
    billm, salient = billm_weight(weight, inputs)
    assert 0 < salient < cols
    assert layer_error(weight, billm, inputs) < 0.5 * layer_error(weight, plain, inputs)


def test_block_parts_hold_the_values_they_claim():
    weight = heavy_tailed_weight(64, 128, seed=1)
    binarized, masks = billm_binarize_block(weight, torch.ones(128))
    salient, concentrated, sparse = masks["salient"], masks["concentrated"], masks["sparse"]
    assert salient.shape == (128,) and 1 <= int(salient.sum()) < 50  # whole columns, searched count
    everything = salient.expand_as(weight).int() + concentrated.int() + sparse.int()
    assert bool((everything == 1).all())  # the three parts cover the block exactly once
    assert bool((weight[concentrated].abs().max() <= weight[sparse].abs().min()))  # a break point of |w|
    for row in range(weight.shape[0]):
        assert binarized[row, salient].unique().numel() <= 4  # residual binarization: 2 bits
        assert binarized[row][concentrated[row]].unique().numel() <= 2
        assert binarized[row][sparse[row]].unique().numel() <= 2


def test_salient_columns_are_the_most_sensitive():
    weight = heavy_tailed_weight(64, 128, seed=2)
    sensitivity = torch.ones_like(weight)
    sensitivity[:, [5, 77, 100]] = 100.0
    mask = salient_column_mask(weight, sensitivity, 50)
    ranked = torch.argsort(sensitivity.sum(0), descending=True)
    assert bool(mask[ranked[:int(mask.sum())]].all())


def test_a_synthetic_layer_averages_about_1_1_bits_the_papers_way():
    # the paper's Eq. 14: 2 bits per salient weight, 1 per other weight; whole columns are salient
    weight = heavy_tailed_weight(256, 512, seed=3)
    _, salient_columns = billm_weight(weight, correlated_inputs(2048, 512))
    assert 1.03 < 1 + salient_columns / 512 < 1.2


def test_the_model_report_is_1_plus_the_salient_fraction(tiny_llama):
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    _, report, _ = quantized_copy_logit_error(tiny_llama, quantize_billm, QuantSpec(1.1, group_size=128), windows)
    assert report["quantized_linears"] == 14
    assert report["avg_bits"] == pytest.approx(1 + report["salient_fraction"])
    assert 1.0 < report["avg_bits"] < 1.5 and report["flag_bits"] == pytest.approx(1 + 1 / 128)


def test_the_closed_form_split_errors_equal_binarizing_each_split():
    weight = heavy_tailed_weight(32, 100, seed=4)
    salient = torch.zeros(100, dtype=torch.bool)
    salient[[3, 50]] = True
    others = ~salient.expand_as(weight)
    breaks = torch.quantile(weight.abs()[others], torch.linspace(0.1, 0.9, 9))
    closed_form = split_errors(torch.sort(weight[:, ~salient], dim=1).values, breaks)
    for point, error in zip(breaks, closed_form):
        concentrated = (weight.abs() < point) & others
        direct = binarization_error(weight, concentrated) + binarization_error(weight, others & ~concentrated)
        assert float(error) == pytest.approx(float(direct), rel=1e-5)


def test_the_residual_error_shortcut_equals_binarizing_twice():
    weight = heavy_tailed_weight(16, 40, seed=5)
    everything = torch.ones_like(weight, dtype=torch.bool)
    assert float(residual_binarization_error(weight)) == pytest.approx(float(binarization_error(weight, everything, 2)),
                                                                     rel=1e-5)
