"""QuIP against its defining properties: the incoherence transforms are orthogonal and undo exactly, LDLQ is
OPTQ (the paper's theorem), and the whole pipeline's layer error is below RTN's at low bits."""

import pytest
import torch

from llmq_core.errors import LlmqError
from llmq_core.methods import QuantSpec, check_spec, get_method
from llmq_core.quant.gptq import gptq_quantize_linear
from llmq_core.quant.primitives import find_scale_zero, quantize_weight_groupwise
from llmq_core.quant.quip import (incoherence_process, incoherence_unprocess, kronecker_orthogonal, ldlq_round,
                                  quantize_quip, quip_quantize_weight)
from llmq_core.quant.rtn import quantize_rtn
from tests.test_gptq import correlated_inputs, layer_error, quantized_copy_logit_error


def hessian_of(inputs: torch.Tensor) -> torch.Tensor:
    return 2 * inputs.T @ inputs / inputs.shape[0]


@pytest.mark.parametrize("n", [576, 1536, 192, 97])  # SmolLM2's widths, and a prime (one dense factor)
def test_the_kronecker_transform_is_orthogonal(n):
    u = kronecker_orthogonal(n, torch.Generator().manual_seed(n))
    assert torch.allclose(u.T @ u, torch.eye(n), atol=1e-5)
    assert torch.allclose(u @ u.T, torch.eye(n), atol=1e-5)


def test_unprocess_undoes_process_and_the_proxy_loss_is_invariant():
    weight, inputs = torch.randn(48, 576), correlated_inputs(1024, 576)
    hessian = hessian_of(inputs)
    processed, processed_hessian, state = incoherence_process(weight, hessian, torch.Generator().manual_seed(0))
    assert torch.allclose(incoherence_unprocess(processed, state), weight, atol=1e-4)
    # an error made in the rotated basis costs the same in the original one, up to the normalisation of H'
    error = torch.randn_like(processed) * 1e-2
    back = incoherence_unprocess(processed + error, state) - weight
    rotated_cost = torch.trace(error @ processed_hessian @ error.T)
    scaled = hessian / state.scale[:, None] / state.scale[None, :]
    normaliser = 576 / torch.trace(scaled)
    original_cost = torch.trace(back @ hessian @ back.T) * normaliser + 1e-2 * (error ** 2).sum()
    assert torch.isclose(rotated_cost, original_cost, rtol=1e-3)


def test_the_8_bit_round_trip_reproduces_the_weight():
    weight, inputs = torch.randn(64, 576), correlated_inputs(2048, 576)
    generator = torch.Generator().manual_seed(0)
    # the paper's range, +-2.4 RMS, clips the tail of the rotated (near-Gaussian) weights: a few percent
    paper_range = quip_quantize_weight(weight, hessian_of(inputs), 8, generator)
    assert (paper_range - weight).norm() / weight.norm() < 0.08
    # with a range that clips almost nothing, 8 bits leave the rounding (and LDLQ's feedback): under 2 %
    wide_range = quip_quantize_weight(weight, hessian_of(inputs), 8, generator, grid_range=4.5)
    assert (wide_range - weight).norm() / weight.norm() < 0.02


def test_ldlq_equals_gptq_on_the_same_grid():
    weight, inputs = torch.randn(32, 200), correlated_inputs(2048, 200)
    hessian = hessian_of(inputs)
    linear = torch.nn.Linear(200, 32, bias=False)
    linear.weight.data = weight.clone()
    gptq_quantize_linear(linear, hessian, bits=3)
    scale, zero = find_scale_zero(weight, 3)
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(200)  # GPTQ damps internally
    ldlq = (ldlq_round(weight / scale + zero, damped, levels=8) - zero) * scale
    assert torch.allclose(ldlq, linear.weight.data, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_quip_layer_error_is_below_rtn(bits):
    torch.manual_seed(2)
    weight, inputs = torch.randn(96, 576), correlated_inputs(2048, 576)
    quip = quip_quantize_weight(weight, hessian_of(inputs), bits, torch.Generator().manual_seed(0))
    rtn = quantize_weight_groupwise(weight, bits)
    assert layer_error(weight, quip, inputs) < 0.9 * layer_error(weight, rtn, inputs)


def test_quip_on_a_model_beats_rtn_on_the_calibration_data(tiny_llama):
    windows = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    rtn_error, _, _ = quantized_copy_logit_error(tiny_llama, quantize_rtn, QuantSpec(2), windows)
    quip_error, report, _ = quantized_copy_logit_error(tiny_llama, quantize_quip, QuantSpec(2), windows)
    assert report["quantized_linears"] == 14 and 2 < report["avg_bits"] < 2.5
    assert quip_error < rtn_error


def test_quip_refuses_a_group_size():
    with pytest.raises(LlmqError, match="one scale per output channel"):
        check_spec(get_method("quip"), QuantSpec(3, group_size=128))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA graph path needs a GPU")
def test_the_cuda_graph_column_loop_gives_the_eager_loops_rounding():
    """As GPTQ's: one captured graph per block width (576 = 4 x 128 + 64 makes two) runs the eager loop's kernels."""
    torch.manual_seed(4)
    weight, inputs = (torch.rand(256, 576) * 7).cuda(), correlated_inputs(2048, 576).cuda()
    hessian = hessian_of(inputs) + 0.01 * torch.eye(576, device="cuda")
    graph, eager = (ldlq_round(weight, hessian, levels=8, cuda_graph=graph) for graph in (True, False))
    assert torch.equal(graph, eager)
