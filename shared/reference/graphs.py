"""Reference for day 23: one CUDA graph of the decode step per (batch size, length bucket).

The engine uses graphs only once day 23 is finished (shared/engine/capabilities.py); this
reference is the oracle, and what day 20's benchmark replays its cached path with.
"""
from __future__ import annotations

import gc
from typing import Callable

import torch


class DecodeGraphs:
    """run(batch_size, length) replays the graph captured for that key (capturing it first if new)
    and returns the tensor the captured step wrote. `step(batch_size, bucket)` must read only
    buffers whose addresses never change -- the caller updates their contents before run()."""

    def __init__(self, step: Callable[[int, int], torch.Tensor], *, max_len: int, min_bucket: int = 256,
                 warmup: int = 2):
        if max_len < 1 or min_bucket < 1 or warmup < 1:
            raise ValueError(f"DecodeGraphs needs max_len, min_bucket and warmup >= 1, got {max_len}, "
                             f"{min_bucket}, {warmup}")
        self.step, self.max_len, self.min_bucket, self.warmup = step, max_len, min_bucket, warmup
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.captures = 0
        self.pool = None

    def bucket(self, length: int) -> int:
        """The smallest power-of-two multiple of min_bucket that holds length, at most max_len."""
        if not 1 <= length <= self.max_len:
            raise ValueError(f"length {length} outside 1..{self.max_len} (the cache's size)")
        b = self.min_bucket
        while b < length:
            b *= 2
        return min(b, self.max_len)

    def run(self, batch_size: int, length: int) -> torch.Tensor:
        from shared.runtime import gpu
        key = (batch_size, self.bucket(length))
        if gpu.SIM:                                  # no graphs in the simulator: the step itself
            return self.step(*key)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        graph, out = self.graphs[key]
        graph.replay()
        return out

    def _capture(self, batch_size: int, bucket: int):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                # compile every kernel, warm the allocator
            for _ in range(self.warmup):
                self.step(batch_size, bucket)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()   # one memory pool shared by all the graphs
        graph = torch.cuda.CUDAGraph()
        gc.disable()               # no finalizer may free CUDA memory while the stream is capturing
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=side):
                out = self.step(batch_size, bucket)
        finally:
            gc.enable()
        self.captures += 1
        return graph, out
