import pytest
import torch

from llmq_core.methods import QuantSpec, get_method
from llmq_core.models import decoder_linears
from llmq_core.quant.primitives import average_bits


def test_rtn_quantizes_every_decoder_linear_and_nothing_else(tiny_llama):
    before = {name: p.detach().clone() for name, p in tiny_llama.named_parameters()}
    report = get_method("rtn").quantize(tiny_llama, QuantSpec(wbits=3, group_size=64), None)
    linears = {f"model.{name}.weight" for name in decoder_linears(tiny_llama)}
    assert report["quantized_linears"] == len(linears) == 2 * 7
    for name, param in tiny_llama.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in linears), name
        if name in linears:  # widths 96 and 160 with groups of 64: the last group of a row is shorter
            for start in range(0, param.shape[1], 64):
                assert param[0, start:start + 64].unique().numel() <= 8


def test_average_bits_counts_scale_and_zero_per_group():
    assert average_bits(4, 128, 4096) == pytest.approx(4 + 20 / 128)
    assert average_bits(4, 128, 576) == pytest.approx(4 + 5 * 20 / 576)  # 4 full groups + a short one
    assert average_bits(8, None, 4096) == pytest.approx(8 + 24 / 4096)


def test_fp16_changes_nothing(tiny_llama):
    before = [p.detach().clone() for p in tiny_llama.parameters()]
    get_method("fp16").quantize(tiny_llama, QuantSpec(), None)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_llama.parameters()))
