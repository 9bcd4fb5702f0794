"""The one timing helper of the benchmarks: wall time with the GPU's queue drained, and peak GPU memory."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch


def measured(device: str, work: Callable[[], Any]) -> tuple[Any, float, float]:
    """`work()`'s result, its wall seconds and its peak GPU memory in GiB (nan on CPU, where the process's
    resident peak cannot be reset between two measurements)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = work()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return result, seconds, torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
