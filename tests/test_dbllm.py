"""DB-LLM against its defining properties: a weight is a1 * b1 + a2 * b2 per row and group (at most four
values, starting on the 2-bit grid {-s, 0, s, 2s} or its mirror), the distillation loss is a KL divergence
weighted by the teacher's entropy, and distilling the scales lowers that loss below the initialisation's."""

import copy
import math

import pytest
import torch

from llmq_core.quant.dbllm import (DualBinaryLinear, deviation_aware_loss, distill_scales, dual_binarize, fold_back,
                                   quantize_dbllm, swap_in_dual_binary)
from llmq_core.quant.primitives import quantize_weight_groupwise
from llmq_core.registry import QuantSpec
from tests.test_gptq import quantized_copy_logit_error


@pytest.mark.parametrize("cols", [256, 576])  # 576 = SmolLM2's width: a last group of 64 columns
def test_each_row_and_group_holds_the_four_values_of_two_scaled_binaries(cols):
    weight = torch.randn(48, cols, generator=torch.Generator().manual_seed(0)) * 0.02
    linear = torch.nn.Linear(cols, 48, bias=False)
    linear.weight.data = weight
    dual = DualBinaryLinear(linear, 128)
    quantized = dual.weight_matrix().detach()
    for row in range(48):
        for group, start in enumerate(range(0, cols, 128)):
            values = set(quantized[row, start:start + 128].tolist())
            a1, a2 = float(dual.scale_first[row, group].detach()), float(dual.scale_second[row, group].detach())
            assert values <= {0.0, a1, a2, a1 + a2}
            assert a1 == pytest.approx(-2 * a2)  # the initialisation: a1 = 2s, a2 = -s (or the mirror)


def test_the_initialisation_beats_2_bit_min_max_round_to_nearest():
    weight = torch.randn(64, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    first, second, scale_first, scale_second = dual_binarize(weight, 128)
    dual = scale_first.repeat_interleave(128, 1) * first + scale_second.repeat_interleave(128, 1) * second
    rtn = quantize_weight_groupwise(weight, 2, 128)
    # the clip search pays: 0.57 of RTN's squared error on Gaussian weights
    assert (dual - weight).square().sum() <= 0.8 * (rtn - weight).square().sum()


def test_the_loss_is_the_entropy_weighted_kl_divergence():
    teacher = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # a confident and an ambiguous token
    student = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    assert float(deviation_aware_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    expected_divergence, expected_weight = [], []
    for t, s in zip(teacher[0].tolist(), student[0].tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in t) for v in t]
        q = [math.exp(v) / sum(math.exp(u) for u in s) for v in s]
        expected_divergence.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
        expected_weight.append(-sum(pi * math.log(pi) for pi in p) / math.log(3))
    expected = sum(w * d for w, d in zip(expected_weight, expected_divergence)) / sum(expected_weight)
    assert float(deviation_aware_loss(student, teacher)) == pytest.approx(expected, rel=1e-5)
    assert expected_weight[1] == pytest.approx(1.0) and expected_weight[0] < 0.7  # ambiguity weighs more


def test_distilling_the_scales_lowers_the_loss_below_the_initialisation(tiny_llama):
    windows = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    teacher = copy.deepcopy(tiny_llama)
    swaps = swap_in_dual_binary(tiny_llama, 64)
    codes = [swap.dual.first.clone() for swap in swaps]

    def loss_on_all_windows() -> float:
        with torch.no_grad():
            return float(deviation_aware_loss(tiny_llama(windows).logits, teacher(windows).logits))

    before = loss_on_all_windows()
    losses = distill_scales(tiny_llama, teacher, swaps, windows, steps=40, lr=1e-3)
    assert len(losses) == 40 and loss_on_all_windows() < 0.9 * before
    assert all(torch.equal(code, swap.dual.first) for code, swap in zip(codes, swaps))  # the codes stay fixed
    with torch.no_grad():
        distilled = tiny_llama(windows).logits
        fold_back(swaps)
        assert not any(isinstance(m, DualBinaryLinear) for m in tiny_llama.modules())
        torch.testing.assert_close(tiny_llama(windows).logits, distilled)


def test_the_method_reports_2_bits_its_scale_bits_and_its_losses(tiny_llama):
    windows = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    spec = QuantSpec(2, group_size=64, options={"steps": 3})
    _, report, model = quantized_copy_logit_error(tiny_llama, quantize_dbllm, spec, windows)
    assert report["avg_bits"] == 2 and report["quantized_linears"] == 14 and len(report["distill_losses"]) == 3
    assert 32 / 64 <= report["scale_bits"] <= 0.7  # two fp16 scales per row and group of 64 (96 = 64 + 32 wide)
    assert not any(isinstance(m, DualBinaryLinear) for m in model.modules())
