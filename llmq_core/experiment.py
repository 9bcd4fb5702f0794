"""One configuration of the study: what to quantize, how, and what to score it on.

A notebook (or `run_all.py`) builds a `RunConfig`, checks it, loads the model, quantizes it
and calls `evaluate_and_record`, which scores every perplexity text and zero-shot task that
the results store does not already hold for this configuration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmq_core.data import HUB_TEXTS, OFFLINE_TEXTS, calibration_windows, check_text_name
from llmq_core.errors import LlmqError
from llmq_core.eval.lm import saved_answer_count
from llmq_core.eval.targets import TARGET_KINDS, target_kind
from llmq_core.eval.tasks import EXPENSIVE_TASKS, TASKS, check_task_name
from llmq_core.lora.finetune import finetune, load_adapter_weights, loss_curve, save_adapter
from llmq_core.lora.instructions import instruction_batches, load_instructions
from llmq_core.methods import METHODS, QuantSpec, check_spec, get_method
from llmq_core.models import check_model_available, default_dtype, is_offloaded, model_fingerprint, place_for_evaluation
from llmq_core.results import ResultStore, Timer, adapters_dir, answers_dir, key_hash, peak_memory_mb


def parse_group_size(value: Any) -> int | None:
    """128 -> 128; None, "channel" or "per-channel" -> None (one scale per output row)."""
    if value is None or (isinstance(value, str) and value.lower() in ("channel", "per-channel", "none")):
        return None
    try:
        group = int(value)
    except (TypeError, ValueError):
        group = 0
    if group < 1 or str(group) != str(value).strip():
        raise LlmqError(f"group size must be a positive integer, or 'channel' for one scale per output row; got {value!r}")
    return group


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    method: str = "fp16"
    wbits: float = 16
    abits: int = 16
    group_size: int | None = None
    symmetric: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    data: str = "offline"  # "offline" (asset cache) or "hub"
    datasets: list[str] | None = None  # perplexity texts; None = the data source's three
    tasks: list[str] | None = None  # zero-shot tasks and mmlu; None = the five (and mmlu for the LoRA-FT track)
    limit: int | None = None  # zero-shot: score the first `limit` documents of each task
    mmlu_limit: int | None = None  # MMLU: the first `mmlu_limit` questions of each of its 57 subjects
    ppl_windows: int | None = None  # perplexity: score the first `ppl_windows` windows
    seqlen: int = 2048
    seed: int = 0
    device: str = "cpu"
    # Calibration, for the methods that need it: `nsamples` random windows of `calib_seqlen` tokens
    # (default: seqlen) from the training split of `calibration` (default: the stand-in for WikiText2
    # offline, WikiText2 from the hub). The paper: 128 x 2048 from WikiText2.
    calibration: str | None = None
    nsamples: int = 128
    calib_seqlen: int | None = None
    batch_size: int = 16  # lm-eval batch size; changes the numbers only by floating-point rounding

    def __post_init__(self) -> None:
        self.group_size = parse_group_size(self.group_size)
        # 4 and 4.0 must give one record key: the CLI parses floats, YAML keeps ints; 1.7 stays 1.7.
        if isinstance(self.wbits, float) and self.wbits.is_integer():
            self.wbits = int(self.wbits)
        if self.datasets is None:
            self.datasets = list(OFFLINE_TEXTS if self.data == "offline" else HUB_TEXTS)
        if self.tasks is None:
            lora_ft = self.method in METHODS and METHODS[self.method].track == "lora_ft"
            self.tasks = [*TASKS, "mmlu"] if lora_ft else list(TASKS)
        if self.method == "fp16":
            self.wbits = 16
        if self.method in METHODS and METHODS[self.method].always_symmetric:
            self.symmetric = True
        if self.calibration is None:
            self.calibration = "enwiki-excerpt" if self.data == "offline" else "wikitext2"
        if self.calib_seqlen is None:
            self.calib_seqlen = self.seqlen

    @property
    def needs_calibration(self) -> bool:
        return get_method(self.method).needs_calibration if self.method in METHODS else False

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec(self.wbits, self.abits, self.group_size, self.symmetric, self.options)

    @property
    def dtype(self) -> torch.dtype:
        return default_dtype(self.device)

    def validate(self) -> None:
        """Raise LlmqError, with how to fix it, for anything that would fail later."""
        check_spec(get_method(self.method), self.spec)
        check_model_available(self.model)
        if self.data not in ("offline", "hub"):
            raise LlmqError(f"data must be 'offline' or 'hub', not {self.data!r}")
        for name in self.datasets:
            check_text_name(name, self.data)
        for task in self.tasks:
            check_task_name(task)
        for name in (kind.limit for kind in TARGET_KINDS.values()):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LlmqError(f"{name} must be a positive integer or left out (everything), not {value!r}")
        if not isinstance(self.seqlen, int) or self.seqlen < 16:
            raise LlmqError(f"seqlen must be an integer >= 16, not {self.seqlen!r}")
        if self.needs_calibration:
            check_text_name(self.calibration, self.data)
            for name in ("nsamples", "calib_seqlen"):
                if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                    raise LlmqError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise LlmqError(f"device {self.device!r} asked for, but torch sees no CUDA GPU; use --device cpu")

    def record_key(self, target: str) -> dict[str, Any]:
        """The results-store key of one number: this configuration scored on one text or task."""
        kind = target_kind(target)
        # Calibration belongs to the key only where it matters, so that RTN's keys stay as they were.
        calibration = ({"calibration": self.calibration, "nsamples": self.nsamples, "calib_seqlen": self.calib_seqlen}
                       if self.needs_calibration else {})
        return {
            "model": self.model, "method": self.method, "wbits": self.wbits, "abits": self.abits,
            "group_size": self.group_size, "symmetric": self.symmetric, "options": self.options,
            "data": self.data if kind.on_texts else "tasks", "target": target, "kind": kind.name,
            "limit": getattr(self, kind.limit), "seqlen": self.seqlen if kind.on_texts else None,
            "dtype": str(self.dtype).removeprefix("torch."), "seed": self.seed, **calibration,
        }

    def targets(self) -> list[str]:
        return [*self.datasets, *self.tasks]

    def pending(self, store: ResultStore) -> list[str]:
        return [t for t in self.targets() if store.get(self.record_key(t)) is None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    options = {**method.options, **config.options}
    torch.manual_seed(config.seed)
    if config.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with Timer() as prepare_timer:
        model, tokenizer, report = method.quantize(config.model, config.spec, config.device, config.dtype)
    trained_as = {"model": config.model, "method": config.method, "wbits": config.wbits, "options": options,
                  "seed": config.seed, "dtype": str(config.dtype)}
    saved = adapters_dir() / key_hash(trained_as)
    if reuse and (saved / "report.json").exists():
        load_adapter_weights(model, saved)
        finished = json.loads((saved / "report.json").read_text())
        losses = finished.pop("losses")
        return model, tokenizer, {**finished, "adapter_reused_from": str(saved)}, losses
    records = load_instructions(options["instructions"])
    batches = instruction_batches(records, tokenizer, options["train_batch_size"], options["source_max_len"],
                                  options["target_max_len"], config.seed)
    with Timer() as finetune_timer:
        trained = finetune(model, batches, options["steps"], options["lr"], progress)
    report = {**report, "prepare_time_s": round(prepare_timer.seconds, 3), "steps": options["steps"],
              "finetune_time_s": round(finetune_timer.seconds, 3), "response_tokens": trained["response_tokens"],
              "instructions": options["instructions"], "instruction_pairs": len(records),
              "loss_curve": loss_curve(trained["losses"]),
              "finetune_peak_memory_mb": round(peak_memory_mb(config.device), 1)}
    if options["steps"]:
        save_adapter(model, saved)
        (saved / "report.json").write_text(json.dumps({**report, "losses": trained["losses"]}))
    if config.device.startswith("cuda"):
        torch.cuda.empty_cache()  # the training's cached blocks, for the other runs sharing the GPU
    return model, tokenizer, report, trained["losses"]


def evaluate_and_record(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: RunConfig,
                        quant_report: dict[str, Any], store: ResultStore | None = None,
                        force: bool = False) -> pd.DataFrame:
    """Score every text and task of `config` that the store lacks (all of them with `force`); one row each."""
    store = store or ResultStore()
    todo = config.targets() if force else config.pending(store)
    if todo and is_offloaded(model):  # larger than the GPU: its blocks over the visible GPUs, the rest in CPU memory
        place_for_evaluation(model)
    # the expensive tasks last, so that a run cut short (a batch job's time limit) has stored the cheaper records
    todo = sorted(todo, key=lambda target: target in EXPENSIVE_TASKS)
    # and the tasks' answers checkpointed, for these exact weights: a cut task resumes where it was
    checkpointed = [target for target in todo if target_kind(target).checkpointed]
    fingerprint = model_fingerprint(model) if checkpointed else None
    for target in tqdm(todo, desc=f"{config.method} w{config.wbits:g} evaluation"):
        if config.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        answers = (answers_dir() / f"{key_hash(config.record_key(target))}-{fingerprint}.json"
                   if target in checkpointed else None)
        if answers and force:
            answers.unlink(missing_ok=True)
        resumed = {"resumed_answers": saved_answer_count(answers)} if answers and answers.exists() else {}
        with Timer() as timer:
            metrics = target_kind(target).score(model, tokenizer, target, config, answers)
        store.put(config.record_key(target), metrics, wall_time_s=timer.seconds, device=config.device,
                  extra={"quantization": quant_report, **resumed}, replace=force)  # wall time: this run's part
        if answers:
            answers.unlink(missing_ok=True)  # the record holds the result now
    rows = []
    for target in config.targets():
        record = store.get(config.record_key(target))
        metrics = record["metrics"]
        rows.append({"target": target, "ppl": metrics.get("ppl"), "acc": metrics.get("acc"),
                     "acc_norm": metrics.get("acc_norm"), "n": metrics["n"], "wall_time_s": record["wall_time_s"],
                     "device": record["device"]})
    return pd.DataFrame(rows).set_index("target")
