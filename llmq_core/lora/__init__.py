"""The LoRA-FT track: a quantized base whose LoRA adapters are then fine-tuned (qlora.py, irqlora.py register the
methods; llmq_core.methods imports them after the post-training methods)."""
