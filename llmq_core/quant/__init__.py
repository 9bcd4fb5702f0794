"""Post-training quantization methods, one module each; importing this package registers them."""

# in the order of the tables: FP16, RTN, then the paper's order
from llmq_core.quant import fp16, rtn, gptq, awq, quip, smoothquant, pbllm, billm, dbllm  # noqa: F401, I001
