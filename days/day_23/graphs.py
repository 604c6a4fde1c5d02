"""Day 23 -- capture the decode step in a CUDA graph once, replay it for every token.

Lesson: notes/day_23_cuda_graphs.md        Check: pytest checkers/day_23

A decode step is ~400 small kernels; launching each from Python costs ~17 us of host time, far
more than most of them take on the GPU. A CUDA graph records the whole step once and replays it
with one launch. What a graph records is kernels *and the addresses of their arguments*: so the
step must read its inputs (token id, position, cache length) from buffers that never move, and
the caller writes new values into those buffers before each replay.
"""
from __future__ import annotations

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
        # TODO(day 23): validate (max_len, min_bucket, warmup >= 1, else one-line ValueError); keep
        # step and the settings; self.graphs = {} (key -> (graph, output)); self.captures = 0;
        # self.pool = None (one torch.cuda.graph_pool_handle() shared by every graph).
        raise NotImplementedError("Day 23: DecodeGraphs is not written yet -- edit days/day_23/graphs.py "
                                  "(lesson: notes/day_23_cuda_graphs.md)")

    def bucket(self, length: int) -> int:
        """min_bucket, 2*min_bucket, 4*min_bucket, ... : the first that holds `length`, capped at max_len."""
        raise NotImplementedError("Day 23: DecodeGraphs.bucket is not written yet -- edit days/day_23/graphs.py "
                                  "(lesson: notes/day_23_cuda_graphs.md)")

    def run(self, batch_size: int, length: int) -> torch.Tensor:
        # TODO(day 23): key = (batch_size, bucket(length)). Simulator: return step(*key). GPU: capture
        # the key's graph if it is new, replay it, return the output tensor captured with it.
        raise NotImplementedError("Day 23: DecodeGraphs.run is not written yet -- edit days/day_23/graphs.py "
                                  "(lesson: notes/day_23_cuda_graphs.md)")

    def _capture(self, batch_size: int, bucket: int):
        # TODO(day 23): warm up (run step `warmup` times on a side stream, then make the current
        # stream wait for it), then record one step with torch.cuda.graph(graph, pool=self.pool,
        # stream=side) -- one pool for every graph -- with the garbage collector off (import gc;
        # gc.disable() before, gc.enable() in a finally). Count the capture; return (graph, output).
        raise NotImplementedError("Day 23: DecodeGraphs._capture is not written yet -- edit days/day_23/graphs.py "
                                  "(lesson: notes/day_23_cuda_graphs.md)")
