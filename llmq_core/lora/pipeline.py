"""A LoRA-FT configuration end to end: its method builds the quantized base with adapters, which is fine-tuned on
instruction data; the trained adapter is kept, so that the same configuration run again reuses it."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.config import RunConfig
from llmq_core.errors import LlmqError
from llmq_core.lora.finetune import finetune, load_adapter_weights, loss_curve, save_adapter
from llmq_core.lora.instructions import instruction_batches, load_instructions
from llmq_core.methods import get_method
from llmq_core.results import Timer, adapters_dir, key_hash, peak_memory_mb


def prepare_and_finetune(config: RunConfig, progress: bool = True, reuse: bool = True
                          ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any], list[float]]:
    """A LoRA-FT configuration: its quantized base with adapters, fine-tuned for the `steps` option on the
    `instructions` option's data. Returns the model, its tokenizer, the report (times, steps, tokens, a
    short loss curve, peak memory) that is stored with the results, and the loss of every step.

    The trained adapter and its report are kept in `adapters_dir()`; with `reuse`, a run of the same
    configuration (e.g. a sweep resumed after a time limit) loads them instead of training again."""
    method = get_method(config.method)
    if method.track != "lora_ft":
        raise LlmqError(f"{method.name} is a post-training method: use load_model and quantize_model")
    options = method.options(**config.options)
    torch.manual_seed(config.seed)
    if config.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with Timer() as prepare_timer:
        model, tokenizer, report = method.quantize(config.model, config.spec, config.device, config.dtype)
    trained_as = {"model": config.model, "method": config.method, "wbits": config.wbits, "options": asdict(options),
                  "seed": config.seed, "dtype": str(config.dtype)}
    saved = adapters_dir() / key_hash(trained_as)
    if reuse and (saved / "report.json").exists():
        load_adapter_weights(model, saved)
        finished = json.loads((saved / "report.json").read_text())
        losses = finished.pop("losses")
        return model, tokenizer, {**finished, "adapter_reused_from": str(saved)}, losses
    records = load_instructions(options.instructions)
    batches = instruction_batches(records, tokenizer, options.train_batch_size, options.source_max_len,
                                  options.target_max_len, config.seed)
    with Timer() as finetune_timer:
        trained = finetune(model, batches, options.steps, options.lr, progress)
    report = {**report, "prepare_time_s": round(prepare_timer.seconds, 3), "steps": options.steps,
              "finetune_time_s": round(finetune_timer.seconds, 3), "response_tokens": trained["response_tokens"],
              "instructions": options.instructions, "instruction_pairs": len(records),
              "loss_curve": loss_curve(trained["losses"]),
              "finetune_peak_memory_mb": round(peak_memory_mb(config.device), 1)}
    if options.steps:
        save_adapter(model, saved)
        (saved / "report.json").write_text(json.dumps({**report, "losses": trained["losses"]}))
    if config.device.startswith("cuda"):
        torch.cuda.empty_cache()  # the training's cached blocks, for the other runs sharing the GPU
    return model, tokenizer, report, trained["losses"]
