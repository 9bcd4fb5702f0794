"""Quantization methods. Importing this package registers every method (one module each)."""

from llmq_core.quant.registry import METHODS, Method, QuantSpec, check_spec, get_method, register_method
from llmq_core.quant import awq, fp16, gptq, quip, rtn, smoothquant  # noqa: F401  (registers the methods)

__all__ = ["METHODS", "Method", "QuantSpec", "check_spec", "get_method", "register_method"]
