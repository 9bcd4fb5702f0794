"""Quantization methods. Importing this package registers every method (one module each)."""

from llmq_core.quant.registry import METHODS, Method, QuantSpec, check_spec, get_method, register_method
# registers the methods, in the order of the tables: FP16, RTN, then the paper's order
from llmq_core.quant import fp16, rtn, gptq, awq, quip, smoothquant, pbllm, billm, dbllm  # noqa: F401, I001
# the LoRA-FT track: a quantized base that is then fine-tuned (llmq_core/lora/)
from llmq_core.lora import qlora, irqlora  # noqa: F401, E402, I001

__all__ = ["METHODS", "Method", "QuantSpec", "check_spec", "get_method", "register_method"]
