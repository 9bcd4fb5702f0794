"""Perplexity on non-overlapping windows, as in the GPTQ/seed-repo evaluation.

The test text is cut into N = len // seqlen windows of `seqlen` tokens (the tail is dropped).
Each window is scored independently; the perplexity is exp of the mean next-token NLL over
all predicted tokens: PPL = exp( (1 / (N (seqlen-1))) * sum_w sum_t -log p(x_{w,t+1} | x_{w,<=t}) ).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmq_core.models import compiled_blocks, head_logits

# Positions whose logits are materialised at once, over all windows of a batch: a 128k vocabulary at
# seqlen 2048 in fp32 would be a GB per window, and only the log-sum-exp and one entry per row are needed.
LOGIT_CHUNK = 512
# On a GPU, windows scored at once, with compiled blocks: 1.18-1.23x the tokens/s of one eager window at a time
# at LLaMA-3-8B's shape, 69-72 % of the H200's bf16 peak (bench/perplexity_speed.py, bench/RESULTS.md). On the
# CPU one window at a time, eager, as the committed notebooks were run (compiling there is not measured).
GPU_BATCH_SIZE = 4


@torch.no_grad()
def perplexity(model: torch.nn.Module, token_ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
               batch_size: int | None = None, progress: bool = True, compile_blocks: bool | None = None) -> float:
    """Perplexity of `model` on `token_ids` (shape (1, N)), over at most `max_windows` windows, `batch_size`
    windows at a time; `compile_blocks` compiles the decoder blocks for it (`models.compiled_blocks`). Left at
    None, both are the study's choice for the model's device (GPU_BATCH_SIZE and compiled on a GPU)."""
    windows = token_ids.shape[1] // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise ValueError(f"the text has {token_ids.shape[1]} tokens, fewer than one window of {seqlen}")
    device = next(model.parameters()).device
    on_gpu = device.type == "cuda"
    batch_size = batch_size or (GPU_BATCH_SIZE if on_gpu else 1)
    compile_blocks = on_gpu if compile_blocks is None else compile_blocks
    batches = token_ids[0, :windows * seqlen].view(windows, seqlen).split(batch_size)
    decoder = model.get_decoder()
    total_nll = torch.zeros((), dtype=torch.float64, device=device)  # read back once, at the end: no sync a chunk
    with compiled_blocks(model) if compile_blocks else nullcontext():
        for batch in tqdm(batches, desc=f"perplexity ({windows}x{seqlen})", disable=not progress, leave=False):
            batch = batch.to(device)
            # no KV cache: nothing is generated, and a compiled block would recompile for each block's cache slot
            hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state[:, :-1].flatten(0, 1)
            targets = batch[:, 1:].flatten()
            for start in range(0, hidden.shape[0], LOGIT_CHUNK):
                logits = head_logits(model, hidden[start:start + LOGIT_CHUNK]).float()  # on the head's GPU, under device_map
                chunk_targets = targets[start:start + LOGIT_CHUNK].to(logits.device)
                total_nll += F.cross_entropy(logits, chunk_targets, reduction="sum").double().to(device)
    return math.exp(total_nll.item() / (windows * (seqlen - 1)))
