import pytest
import torch

from llmq_core.quant.primitives import find_scale_zero, quantize_weight_groupwise


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 128, 64])
def test_each_group_has_at_most_2_to_the_bits_levels(bits, group_size):
    torch.manual_seed(bits)
    weight = torch.randn(8, 576)
    quantized = quantize_weight_groupwise(weight, bits, group_size)
    group = group_size or 576
    for row in quantized:
        for start in range(0, 576, group):
            assert row[start:start + group].unique().numel() <= 2 ** bits


def test_short_last_group_is_quantized_on_its_own():
    """576 = 4 x 128 + 64: the last 64 columns form a group of their own, as if quantized alone."""
    torch.manual_seed(0)
    weight = torch.randn(4, 576)
    weight[:, 512:] *= 10  # a different range: a group that straddled would mix it with the previous one
    quantized = quantize_weight_groupwise(weight, 3, 128)
    assert torch.equal(quantized[:, 512:], quantize_weight_groupwise(weight[:, 512:], 3, None))
    assert torch.equal(quantized[:, 128:256], quantize_weight_groupwise(weight[:, 128:256], 3, None))


def test_groups_never_straddle_rows():
    weight = torch.randn(2, 96)
    weight[1] *= 100
    quantized = quantize_weight_groupwise(weight, 4, 128)  # one group is wider than a row
    assert torch.equal(quantized[0], quantize_weight_groupwise(weight[:1], 4, None)[0])


def test_error_shrinks_with_bits_and_groups():
    torch.manual_seed(0)
    weight = torch.randn(64, 512)
    weight[:, 7] *= 20  # an outlier column, as in real LLM weights
    error = {(b, g): (quantize_weight_groupwise(weight, b, g) - weight).norm().item()
             for b in (2, 3, 4, 8) for g in (None, 128)}
    for g in (None, 128):
        assert error[(2, g)] > error[(3, g)] > error[(4, g)] > error[(8, g)]
    for b in (2, 3, 4):
        assert error[(b, 128)] < error[(b, None)]


def test_quantization_is_idempotent_and_keeps_zero_exact():
    torch.manual_seed(0)
    weight = torch.randn(16, 256)
    weight[0, :10] = 0
    once = quantize_weight_groupwise(weight, 3, 64)
    assert torch.allclose(quantize_weight_groupwise(once, 3, 64), once, atol=1e-6)  # equal up to float rounding
    assert torch.all(once[0, :10] == 0)


def test_symmetric_grid_is_centred_and_asymmetric_uses_the_range():
    weight = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    scale, zero = find_scale_zero(weight, 2)
    assert scale.item() == pytest.approx(1.0) and zero.item() == 0
    quantized = quantize_weight_groupwise(weight, 2)
    assert torch.equal(quantized, weight)
    scale, zero = find_scale_zero(weight, 2, symmetric=True)
    assert zero.item() == 2 and scale.item() == pytest.approx(2.0)


def test_keeps_dtype_and_shape():
    weight = torch.randn(32, 200, dtype=torch.bfloat16)
    quantized = quantize_weight_groupwise(weight, 4, 128)
    assert quantized.dtype == torch.bfloat16 and quantized.shape == weight.shape
