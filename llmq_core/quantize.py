"""A post-training configuration's quantization: its method run on the loaded model, timed, with calibration
windows drawn for the methods that need them."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.config import RunConfig
from llmq_core.data import calibration_windows
from llmq_core.errors import LlmqError
from llmq_core.methods import METHODS, get_method
from llmq_core.models import is_offloaded
from llmq_core.results import Timer, peak_memory_mb


def quantize_model(model: PreTrainedModel, config: RunConfig,
                   tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
    """Run the configuration's method on `model` in place; returns its report, wall time and peak memory.

    Methods that need calibration get `config.nsamples` windows of `config.calib_seqlen` tokens
    from the calibration text (which needs the tokenizer); the time to draw them is not counted.
    """
    method = get_method(config.method)
    if method.track == "lora_ft":
        raise LlmqError(f"{method.name} fine-tunes a quantized base: build it with prepare_and_finetune(config)")
    if is_offloaded(model) and not method.offloads:
        able = ", ".join(name for name, m in METHODS.items() if m.offloads and m.track == "ptq")
        raise LlmqError(f"{method.name} runs the whole model at once, and this model is held in CPU memory because "
                        f"it is larger than the GPU; use GPUs that hold it, or one of: {able}")
    calibration = None
    if method.needs_calibration:
        if tokenizer is None:
            raise LlmqError(f"{method.name} calibrates on text: pass the tokenizer to quantize_model")
        calibration = calibration_windows(config.calibration, tokenizer, config.nsamples, config.calib_seqlen,
                                          config.data, config.seed)
    if config.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with Timer() as timer:
        report = method.quantize(model, config.spec, calibration)
    return {**report, "quantize_time_s": round(timer.seconds, 3),
            "quantize_peak_memory_mb": round(peak_memory_mb(config.device), 1)}
