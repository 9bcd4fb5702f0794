"""A column loop run once per block of a Linear's columns, replayed as a CUDA graph on a GPU.

GPTQ's, PB-LLM's and QuIP's loops launch about ten small kernels per column, 38,912 columns per LLaMA-3-8B
block; on a GPU the launches, not the arithmetic, set their pace. Captured once per block shape as a CUDA graph,
a block's whole loop is one launch. On a CPU (or with `cuda_graph=False`) the loop runs eagerly.
"""

from __future__ import annotations

from typing import Callable

import torch

class CapturedColumns:
    """A column loop for one block shape (`gptq_columns`; PB-LLM's and QuIP's use it too), captured once as a
    CUDA graph and replayed for each block of that shape. Its loop launches about ten small kernels per column,
    38,912 columns per LLaMA-3-8B block; on a GPU the launches, not the arithmetic, set its pace, and a replay
    is one launch for the whole block."""

    def __init__(self, run: Callable[..., tuple[torch.Tensor, ...]], *inputs: torch.Tensor):
        self.inputs = [x.clone() for x in inputs]  # the graph's own input buffers, copied into on each call
        side = torch.cuda.Stream()  # warm-up off the default stream, as CUDA graph capture asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run(*[x.clone() for x in self.inputs])
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = run(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`run`'s outputs for these inputs: for GPTQ the block's quantized columns and errors (copies: the next
        replay overwrites them)."""
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        self.graph.replay()
        return tuple(output.clone() for output in self.outputs)


class ColumnLoop:
    """`run(*inputs)` for each block of a Linear's columns: eager on a CPU (or with `cuda_graph=False`), and on a
    GPU one CapturedColumns per input shape (the last block may be narrower)."""

    def __init__(self, run: Callable[..., tuple[torch.Tensor, ...]], cuda_graph: bool = True):
        self.run, self.cuda_graph = run, cuda_graph
        self.captured: dict[tuple[torch.Size, ...], CapturedColumns] = {}

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (self.cuda_graph and inputs[0].is_cuda):
            return self.run(*inputs)
        shapes = tuple(x.shape for x in inputs)
        if shapes not in self.captured:
            self.captured[shapes] = CapturedColumns(self.run, *inputs)
        return self.captured[shapes](*inputs)
