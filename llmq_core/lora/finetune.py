"""The fine-tuning loop shared by QLoRA and IR-QLoRA, and saving / reloading an adapter.

QLoRA's schedule: AdamW (no weight decay), a constant learning rate after a linear warm-up over
the first 3 % of the steps, gradients clipped to norm 0.3. Only the parameters that require a
gradient (the adapters, and IEC's scales) are trained; the quantized base stays frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

WARMUP_FRACTION = 0.03
MAX_GRAD_NORM = 0.3


def finetune(model: PreTrainedModel, batches: Iterator[dict[str, torch.Tensor]], steps: int, lr: float,
             progress: bool = True) -> dict:
    """Train for `steps` batches; the loss of each step, and the number of response tokens trained on."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    warmup = max(1, round(WARMUP_FRACTION * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    device = next(model.parameters()).device
    losses, tokens = [], 0
    model.train()
    for _ in tqdm(range(steps), desc="fine-tuning", disable=not progress):
        batch = {name: tensor.to(device) for name, tensor in next(batches).items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int((batch["labels"][:, 1:] != -100).sum())
    model.eval()
    return {"losses": losses, "response_tokens": tokens}


def save_adapter(model: PreTrainedModel, folder: Path | str) -> None:
    """peft's adapter files (A, B and IEC's scales): megabytes, where the base is the model."""
    model.save_pretrained(str(folder))


def load_adapter_weights(model: PreTrainedModel, folder: Path | str) -> None:
    """Load saved adapter weights into a model prepared the same way (same method, bits and rank)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    missing = [key for key in result.missing_keys if "lora_" in key or "elastic" in key]
    if missing:
        raise ValueError(f"the adapter in {folder} lacks {len(missing)} weights of this model, e.g. {missing[0]}")


def loss_curve(losses: list[float], points: int = 100) -> list[float]:
    """The losses averaged over consecutive windows, at most `points` of them (what a record keeps)."""
    window = max(1, -(-len(losses) // points))
    return [round(sum(losses[i:i + window]) / len(losses[i:i + window]), 4) for i in range(0, len(losses), window)]
