"""Day 23 -- capture the decode step in a CUDA graph once, replay it for every token.

Lesson: notes/day_23_cuda_graphs.md        Check: pytest checkers/day_23

A decode step is ~400 small kernels; launching each from Python costs ~17 us of host time, far
more than most of them take on the GPU. A CUDA graph records the whole step once and replays it
with one launch. What a graph records is kernels *and the addresses of their arguments*: so the
step must read its inputs (token id, position, cache length) from buffers that never move, and
the caller writes new values into those buffers before each replay.
"""
from __future__ import annotations

import gc
from typing import Callable

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads


class DecodeGraphs:
    """One CUDA graph of `step` per (batch size, length bucket), captured on first use.

    step(batch_size, bucket) -> Tensor runs one decode step reading only fixed buffers.
    run(batch_size, length) returns that tensor after replaying the graph for the key
    (batch_size, bucket(length)); in the simulator (no graphs) it calls step itself.
    """

    def __init__(self, step: Callable[[int, int], torch.Tensor], *, max_len: int, min_bucket: int = 256,
                 warmup: int = 2):
        if max_len < 1 or min_bucket < 1 or warmup < 1:
            raise ValueError(f"DecodeGraphs needs max_len, min_bucket and warmup >= 1, got {max_len}, "
                             f"{min_bucket}, {warmup}")
        self.step, self.max_len, self.min_bucket, self.warmup = step, max_len, min_bucket, warmup
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.captures = 0          # how many graphs were captured (the checker counts re-captures)
        self.pool = None           # one memory pool for all the graphs: they never run at once

    def bucket(self, length: int) -> int:
        """min_bucket, 2*min_bucket, 4*min_bucket, ... : the first that holds `length`, capped at max_len."""
        if not 1 <= length <= self.max_len:
            raise ValueError(f"length {length} outside 1..{self.max_len} (the cache's size)")
        b = self.min_bucket
        while b < length:
            b *= 2
        return min(b, self.max_len)

    def run(self, batch_size: int, length: int) -> torch.Tensor:
        key = (batch_size, self.bucket(length))
        if gpu.SIM:
            return self.step(*key)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        graph, out = self.graphs[key]
        graph.replay()             # the same kernels, reading whatever the buffers hold now
        return out

    def _capture(self, batch_size: int, bucket: int):
        # Warm up on a side stream: the first launch of each kernel compiles it (not allowed during
        # a capture), and torch's allocator settles. Capturing on the default stream is refused.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.step(batch_size, bucket)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        gc.disable()               # no finalizer may free CUDA memory while the stream is capturing
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=side):
                out = self.step(batch_size, bucket)   # recorded, not run: each replay fills `out`
        finally:
            gc.enable()
        self.captures += 1
        return graph, out
