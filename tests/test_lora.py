"""The LoRA-FT track: NormalFloat, QLoRA's adapters and training, IR-QLoRA's ICQ and IEC."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmq_core.lora.finetune import finetune, load_adapter_weights, loss_curve, save_adapter
from llmq_core.lora.instructions import IGNORE_INDEX, collate, format_prompt, tokenize_pair
from llmq_core.lora.irqlora import (add_block_shift, attach_elastic_connections, block_shift_matrix,
                                    calibrate_information, search_information_shift, sorted_block_entropy,
                                    store_shifts)
from llmq_core.lora.normalfloat import (code_entropy, normalfloat_code, normalfloat_roundtrip,
                                        quantize_blockwise)
from llmq_core.lora.qlora import LoraSettings, attach_lora, count_trainable_parameters
from llmq_core.models import decoder_linears
from llmq_core.quant.primitives import fake_quantize, find_scale_zero

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import lora_memory  # noqa: E402


@pytest.fixture
def small_llama() -> LlamaForCausalLM:
    """Widths that are multiples of NF's block of 64, as in every Llama (ICQ's shifts are per row block)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def random_batch(rows: int = 4, length: int = 24) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(rows):
        ids = torch.randint(0, 128, (length,), generator=generator).tolist()
        pairs.append((ids, [IGNORE_INDEX] * (length // 2) + ids[length // 2:]))
    return collate(pairs, pad_token_id=0)


def test_our_nf4_code_book_is_bitsandbytes_nf4():
    from bitsandbytes.functional import get_4bit_type

    torch.testing.assert_close(normalfloat_code(4), get_4bit_type("nf4", device="cpu").float(), atol=1e-6, rtol=0)
    for bits in (2, 3):
        code = normalfloat_code(bits)
        assert code.numel() == 2 ** bits and code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1


def test_our_nf4_roundtrip_matches_bitsandbytes():
    import bitsandbytes.functional as bnb_functional

    weight = torch.randn(256, 512) * 0.02
    packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    theirs = bnb_functional.dequantize_4bit(packed, state)
    ours = normalfloat_roundtrip(weight, 4)
    # the same code for each weight: values agree to the absmax's 8-bit storage, up to a rare neighbouring code
    block_absmax = weight.reshape(-1, 64).abs().amax(dim=1, keepdim=True)
    relative = ((ours - theirs).reshape(-1, 64).abs() / block_absmax)
    assert (relative > 0.02).float().mean() < 0.01
    torch.testing.assert_close((ours - weight).pow(2).mean(), (theirs - weight).pow(2).mean(), rtol=0.01, atol=0)


def test_nf4_error_is_below_int4_rtn_on_normal_weights():
    """NF4's point: for normal weights, quantiles beat a uniform grid at the same bits and block size."""
    weight = torch.randn(512, 512) * 0.02
    scale, zero = find_scale_zero(weight.reshape(-1, 64), bits=4, symmetric=True)
    rtn = fake_quantize(weight.reshape(-1, 64), scale, zero, bits=4).reshape(weight.shape)
    nf4 = normalfloat_roundtrip(weight, 4, double_quant=False)
    assert (nf4 - weight).pow(2).mean() < 0.9 * (rtn - weight).pow(2).mean()


def test_sorted_block_entropy_equals_quantizing_every_weight():
    blocks = torch.randn(300, 64)
    tau = torch.randn(300, 3) * 0.1
    fast = sorted_block_entropy(blocks.sort(dim=1).values, tau, normalfloat_code(4))
    for candidate in range(3):
        slow = code_entropy(quantize_blockwise(blocks - tau[:, candidate:candidate + 1], normalfloat_code(4), 64)[0], 16)
        torch.testing.assert_close(fast[:, candidate], slow)


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_icq_entropy_is_never_below_plain_normalfloat(bits):
    weight = torch.randn(64, 512) * 0.02 + 0.003 * torch.randn(64, 1)  # rows with their own offsets
    blocks, code = weight.reshape(-1, 64), normalfloat_code(bits)
    tau = search_information_shift(weight, bits, tau_range=0.1, tau_n=20)
    searched = code_entropy(quantize_blockwise(blocks - tau[:, None], code, 64)[0], 2 ** bits)
    plain = code_entropy(quantize_blockwise(blocks, code, 64)[0], 2 ** bits)
    assert (searched >= plain - 1e-6).all()
    assert (searched > plain + 1e-6).float().mean() > 0.5  # and the search finds more on most blocks


def test_stored_shifts_are_8_bit_close():
    tau = torch.randn(1000) * 0.01
    stored = store_shifts(tau, blocksize2=256)
    assert (stored - tau).abs().max() < 0.02 * tau.abs().max()


def test_icq_on_a_bitsandbytes_layer_equals_the_same_shift_on_dequantized_weights():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    weight = torch.randn(64, 256) * 0.02
    tau = store_shifts(search_information_shift(weight, 4, tau_n=10))
    shift = block_shift_matrix(tau, weight.shape)
    expanded = shift.repeat_interleave(64, dim=1)
    layer = bnb.nn.Linear4bit(256, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight - expanded, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True, blocksize=64).to("cpu")
    layer.register_buffer("icq_shift", shift)
    layer.register_forward_hook(add_block_shift)
    x = torch.randn(5, 256)
    expected = x @ (normalfloat_roundtrip(weight - expanded, 4) + expanded).T
    assert (layer(x) - expected).abs().max() < 0.05 * (x @ weight.T).abs().max()


def test_lora_model_equals_base_before_training(small_llama):
    ids = torch.randint(0, 128, (2, 16))
    before = small_llama(ids).logits
    model = attach_lora(small_llama, LoraSettings(rank=8, alpha=16, dropout=0.0))
    torch.testing.assert_close(model(input_ids=ids).logits, before)
    attach_elastic_connections(model)
    torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_iec_adds_only_two_scalars_per_adapted_layer(small_llama):
    adapted = len(decoder_linears(small_llama))  # 7 per block
    model = attach_lora(small_llama, LoraSettings(rank=8))
    lora_parameters = count_trainable_parameters(model)
    attach_elastic_connections(model)
    assert count_trainable_parameters(model) - lora_parameters == 2 * adapted


def test_iec_transforms_are_group_mean_and_repeat(small_llama):
    model = attach_lora(small_llama, LoraSettings(rank=8, dropout=0.0))
    attach_elastic_connections(model)
    layer = model.base_model.model.model.layers[0].mlp.up_proj  # 128 -> 256
    down, up = layer.lora_A["default"], layer.lora_B["default"]
    with torch.no_grad():
        down.elastic_scale.fill_(1.0)
        up.elastic_scale.fill_(1.0)
    x = torch.randn(3, 128)
    torch.testing.assert_close(down(x), x @ down.weight.T + x.view(3, 8, 16).mean(-1))
    h = torch.randn(3, 8)
    torch.testing.assert_close(up(h), h @ up.weight.T + h.repeat_interleave(32, dim=-1))


def test_iec_keeps_only_rank_wide_activations_for_the_backward(small_llama):
    """IEC is two parameter-free transforms scaled by scalars: what its backward needs is r wide, never d_out wide."""
    model = attach_lora(small_llama, LoraSettings(rank=8, dropout=0.0))
    ids = torch.randint(0, 128, (2, 16))
    without = lora_memory.saved_bytes_per_token(model, ids)
    attach_elastic_connections(model)
    extra = lora_memory.saved_bytes_per_token(model, ids) - without
    adapted = len(decoder_linears(small_llama))
    assert 0 < extra <= adapted * 8 * 4  # one r-wide fp32 vector per adapted layer (the group mean beta scales)


@pytest.mark.parametrize("elastic", [False, True])
def test_one_training_step_lowers_the_loss_on_its_batch(small_llama, elastic):
    with torch.no_grad():
        for linear in decoder_linears(small_llama).values():
            linear.weight.copy_(normalfloat_roundtrip(linear.weight, 4))
    model = attach_lora(small_llama, LoraSettings(rank=8, dropout=0.0))
    if elastic:
        attach_elastic_connections(model)
    batch = random_batch()
    with torch.no_grad():
        before = model(**batch).loss.item()
    history = finetune(model, itertools.repeat(batch), steps=1, lr=1e-3, progress=False)
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert history["losses"] == [pytest.approx(before)]
    assert after < before
    assert history["response_tokens"] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_an_adapter_saves_and_reloads_with_the_same_outputs(small_llama, tmp_path):
    state = {k: v.clone() for k, v in small_llama.state_dict().items()}
    model = attach_lora(small_llama, LoraSettings(rank=8, dropout=0.0))
    attach_elastic_connections(model)
    finetune(model, itertools.repeat(random_batch()), steps=2, lr=1e-2, progress=False)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
    save_adapter(model, tmp_path)

    fresh = LlamaForCausalLM(small_llama.config).eval()
    fresh.load_state_dict(state)
    reloaded = attach_lora(fresh, LoraSettings(rank=8, dropout=0.0))
    attach_elastic_connections(reloaded)
    with torch.no_grad():
        assert not torch.allclose(reloaded(input_ids=ids).logits, tuned)
    load_adapter_weights(reloaded, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, tuned)


def test_calibrate_information_reports_an_entropy_gain(small_llama):
    full_precision = {name: linear.weight.detach().clone() for name, linear in decoder_linears(small_llama).items()}
    report = calibrate_information(small_llama, full_precision, bits=3, tau_range=0.1, tau_n=10, blocksize2=256)
    assert report["icq_mean_entropy_gain_bits"] > 0
    weight = decoder_linears(small_llama)["layers.0.mlp.up_proj"].weight
    assert len(torch.unique(weight[0, :64])) <= 8  # one block: 8 codes, shifted by one tau


def test_loss_curve_keeps_at_most_100_window_means():
    assert loss_curve([1.0, 3.0]) == [1.0, 3.0]
    curve = loss_curve([float(i) for i in range(1000)])
    assert len(curve) == 100 and curve[0] == pytest.approx(4.5)


def test_an_instruction_pair_is_trained_on_its_response_only(cached_model):
    _, tokenizer = cached_model
    record = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    ids, labels = tokenize_pair(record, tokenizer, source_max_len=384, target_max_len=128)
    prompt = tokenizer(format_prompt(record), add_special_tokens=False).input_ids
    assert format_prompt(record).endswith("### Instruction:\nName a colour.\n\n### Response: ")
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert tokenizer.decode(labels[len(prompt):]) == "Blue." + tokenizer.eos_token
    short_ids, short_labels = tokenize_pair(record, tokenizer, source_max_len=4, target_max_len=2)
    assert len(short_ids) == 6 and short_labels[:4] == [IGNORE_INDEX] * 4
