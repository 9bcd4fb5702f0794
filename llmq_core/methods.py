"""Every method of the study, registered: the post-training methods (quant/), then the LoRA-FT methods (lora/).

Import the registry from here (`from llmq_core.methods import METHODS, get_method`): the imports below fill it, in
the order of the paper's tables, which the reports follow. A new post-training method is a module of quant/,
imported by its __init__; a new LoRA-FT method is a module of lora/, imported here.
"""

# importing them registers their methods, the post-training ones first: METHODS keeps the order of the tables
from llmq_core import quant  # noqa: F401, I001
from llmq_core.lora import qlora, irqlora  # noqa: F401, I001
from llmq_core.registry import METHODS, Method, QuantSpec, check_spec, get_method

__all__ = ["METHODS", "Method", "QuantSpec", "check_spec", "get_method"]
