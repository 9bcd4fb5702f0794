"""A method's options are a typed dataclass: the registry refuses unknown names and ill-typed values before any
compute, and the method reads them with their defaults."""

import pytest

from llmq_core.errors import LlmqError
from llmq_core.methods import QuantSpec, check_spec, get_method
from llmq_core.quant.gptq import GPTQOptions


@pytest.mark.parametrize("method, options, message", [
    ("gptq", {"act_order": "yes"}, "gptq's act_order is true or false, not 'yes'"),
    ("gptq", {"percdamp": True}, "gptq's percdamp is a number, not True"),
    ("gptq", {"percdamp": "0.01"}, "gptq's percdamp is a number, not '0.01'"),
    ("dbllm", {"steps": 2.5}, "dbllm's steps is an integer, not 2.5"),
    ("dbllm", {"steps": True}, "dbllm's steps is an integer, not True"),
    ("pbllm", {"salient_metric": "random"}, "pbllm's salient_metric is one of 'hessian', 'magnitude', not 'random'"),
    ("qlora", {"instructions": "dolly"}, "qlora's instructions is one of 'sharegpt', 'alpaca', not 'dolly'"),
    ("irqlora", {"tau_n": "many"}, "irqlora's tau_n is an integer, not 'many'"),
    ("rtn", {"act_order": True}, "rtn has no option act_order; its options are none"),
    ("gptq", {"actorder": True}, "gptq has no option actorder; its options are act_order=False"),
])
def test_an_unknown_or_ill_typed_option_is_a_one_line_error(method, options, message):
    bits = {"dbllm": 2, "pbllm": 1.7, "qlora": 4, "irqlora": 4}.get(method, 4)
    with pytest.raises(LlmqError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_spec(get_method(method), QuantSpec(bits, options=options))


def test_well_typed_options_pass_and_read_with_their_defaults():
    for method, options in (("gptq", {"percdamp": 0.1, "act_order": True}), ("dbllm", {"lr": 1}),
                            ("irqlora", {"tau_range": 0.2, "steps": 0})):
        check_spec(get_method(method), QuantSpec({"dbllm": 2, "irqlora": 4}.get(method, 4), options=options))
    read, defaults = GPTQOptions(percdamp=0.1), GPTQOptions()
    assert read.percdamp == 0.1 and (read.act_order, read.true_sequential) == (defaults.act_order, defaults.true_sequential)
    # IR-QLoRA is QLoRA's fine-tune and more: every QLoRA option, with QLoRA's default
    qlora = get_method("qlora").option_defaults()
    assert get_method("irqlora").option_defaults().items() >= qlora.items()


def test_grid_bits_is_the_integer_grid_and_refuses_an_average():
    assert QuantSpec(4.0).grid_bits == 4 and isinstance(QuantSpec(4.0).grid_bits, int)
    with pytest.raises(LlmqError, match="wbits=1.7 is an average"):
        QuantSpec(1.7).grid_bits
