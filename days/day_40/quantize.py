"""Day 40 -- int8 quantization: one scale (and zero point) per tensor, per row or per group of a row.

Lesson: notes/day_40_quant_basics.md        Check: pytest checkers/day_40

Two kernels, one block per (row, group) each:
1. `group_range_kernel`: the group's min and max, two tree reductions in shared memory (day 03).
   Per tensor, it runs a second time over the rows' ranges: a reduction of reductions.
2. `quantize_kernel`: the group's scale (and zero point) from its range, then every element
   rounded half to even and clamped to int8.
The float32 arithmetic is spelled out in shared/reference/quant.py; the int8 values must equal it.
"""
import math

import numpy as np
import torch

from shared.quant import QuantWeight, check_finite, check_quantize_args
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, int32

MAX_BLOCK = 1024   # shared arrays need a size known at compile time: the largest block we allow

# Given: round half to even in float32, as torch.round (2.5 -> 2, 3.5 -> 4, -0.5 -> -0).
if gpu.SIM:
    @cuda.jit(device=True)
    def rint(x):
        return np.float32(np.rint(x))
else:
    @cuda.jit(device=True)
    def rint(x):
        return cuda.libdevice.rintf(x)          # one instruction: cvt.rni.f32.f32


@cuda.jit
def group_range_kernel(lo_src, hi_src, group_size, lo, hi):
    """Block b = (row r, group g) of lo's [rows, groups]: lo[r, g] = min of lo_src[r, group g],
    hi[r, g] = max of hi_src[r, group g], in float32. Group g is columns g * group_size ... + group_size - 1.
    (First pass: lo_src = hi_src = w. Per tensor, a second pass over the rows' lo and hi.)"""
    # TODO(day 40): groups = lo.shape[1]; the block's (r, g) from cuda.blockIdx.x (a 1-D grid of rows * groups
    #   blocks: r = b // groups, g = the rest). Two shared arrays of MAX_BLOCK float32 (one for min, one for max).
    # 1. Each thread folds its strided slice of the group (c = start + tid, start + tid + blockDim.x, ...,
    #    start = g * group_size) into a running min (from +inf) and max (from -inf), in float32.
    # 2. Store both, cuda.syncthreads(), then day 03's tree for both arrays at once, a barrier after every step.
    # 3. Thread 0 writes lo[r, g] and hi[r, g].
    pass


@cuda.jit
def quantize_kernel(w, group_size, lo, hi, symmetric, clip, q, scale, zero):
    """Block b = (row r, group g) of w: scale (and zero point) from the range lo/hi [r, g] (the one
    range [0, 0] when lo has one row for many: per tensor), then q for the group's columns."""
    # TODO(day 40): (r, g) as above, with groups = w.shape[1] // group_size; sr = r, or 0 when lo has one
    #   row for all of w's rows (per tensor). Every thread computes the group's scale s (and zero point),
    #   in float32 -- c = float32(clip); the constants as float32(...) too:
    #   symmetric:  s = c * max(-lo, hi) / 127, zero point 0, clamp to [-127, 127]
    #   asymmetric: l = min(lo, 0), h = max(hi, 0), s = c * (h - l) / 255,
    #               zero point = -128 - rint(c * l / s), clamp to [-128, 127]
    #   (in that order: written as c * h - c * l, a GPU compiler fuses it into one fma that rounds differently)
    #   A scale that comes out 0 (an all-zero group) becomes 1.
    # Thread 0 of a block whose sr == r writes scale[sr, g] and zero[sr, g] (write 0 when symmetric).
    # Then each thread, for its strided columns of the group: v = rint(float32(w[r, col]) / s) + zero point
    #   (a true division, not a multiply by 1 / s), clamp v, store q[r, col] = int32(v).
    pass


def quantize_int8(w: torch.Tensor, *, scheme: str = "symmetric", granularity: str = "channel",
                  group_size: int = 128, clip: float = 1.0, block_size: int = 128) -> QuantWeight:
    """w [out, in] fp16/fp32 -> QuantWeight: int8 q [out, in], float32 scales ([1, 1] per tensor,
    [out, 1] per channel, [out, in // group_size] per group), int8 zero points (asymmetric) or None.

    clip in (0, 1] shrinks the range the grid covers (values past it saturate). One block of
    `block_size` threads (a power of two <= 1024) per (row, group). One-line ValueError for bad input.
    """
    # TODO(day 40): gs = check_quantize_args(w, scheme, granularity, group_size, clip) (given: the one-line
    #   errors, and the columns per scale: in for tensor and channel); a one-line ValueError unless block_size
    #   is a power of two <= MAX_BLOCK; gpu.require_device(w); check_finite(w) (given).
    # Ranges: lo, hi = float32 [rows, in // gs] from group_range_kernel(w, w, gs, lo, hi), rows * groups blocks.
    #   Per tensor, once more over the rows' ranges: group_range_kernel(lo.view(1, rows), hi.view(1, rows),
    #   rows, lo1, hi1) with [1, 1] outputs, one block.
    # Allocate q (int8 [rows, in]), scale (float32, lo's shape), zero (int8, lo's shape); launch
    #   quantize_kernel over rows * groups blocks with float(clip); return
    #   QuantWeight(q, scale, None if symmetric else zero, gs, scheme, granularity, w.dtype).
    raise NotImplementedError("Day 40: quantize_int8 is not written yet -- edit days/day_40/quantize.py "
                              "(lesson: notes/day_40_quant_basics.md)")
