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
    groups = lo.shape[1]
    b = cuda.blockIdx.x
    r = b // groups
    g = b - r * groups
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    smin = cuda.shared.array(MAX_BLOCK, float32)
    smax = cuda.shared.array(MAX_BLOCK, float32)

    start = g * group_size
    a = float32(math.inf)                       # the identities of min and max
    z = float32(-math.inf)
    for c in range(start + tid, start + group_size, nthreads):
        a = min(a, float32(lo_src[r, c]))
        z = max(z, float32(hi_src[r, c]))
    smin[tid] = a
    smax[tid] = z
    cuda.syncthreads()

    s = nthreads // 2
    while s > 0:
        if tid < s:
            smin[tid] = min(smin[tid], smin[tid + s])
            smax[tid] = max(smax[tid], smax[tid + s])
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        lo[r, g] = smin[0]
        hi[r, g] = smax[0]


@cuda.jit
def quantize_kernel(w, group_size, lo, hi, symmetric, clip, q, scale, zero):
    """Block b = (row r, group g) of w: scale (and zero point) from the range lo/hi [r, g] (the one
    range [0, 0] when lo has one row for many: per tensor), then q for the group's columns."""
    groups = w.shape[1] // group_size
    b = cuda.blockIdx.x
    r = b // groups
    g = b - r * groups
    tid = cuda.threadIdx.x
    sr = r if lo.shape[0] == w.shape[0] else 0

    c = float32(clip)
    if symmetric:
        s = c * max(-lo[sr, g], hi[sr, g]) / float32(127)
        if s == float32(0):                     # an all-zero group: any scale gives q = 0; 1 divides safely
            s = float32(1)
        zp = float32(0)
        qmin = float32(-127)                    # symmetric grid: -128 has no +128 partner
    else:
        lo_ = min(lo[sr, g], float32(0))        # the range always holds 0: 0.0 is exact, zero fits int8
        hi_ = max(hi[sr, g], float32(0))
        s = c * (hi_ - lo_) / float32(255)      # no product added to another: nothing to fuse into an fma
        if s == float32(0):
            s = float32(1)
        zp = float32(-128) - rint(c * lo_ / s)  # the low end lands on -128
        qmin = float32(-128)
    if tid == 0 and sr == r:
        scale[sr, g] = s
        zero[sr, g] = int32(zp)

    start = g * group_size
    for col in range(start + tid, start + group_size, cuda.blockDim.x):
        v = rint(float32(w[r, col]) / s) + zp
        q[r, col] = int32(min(max(v, qmin), float32(127)))


def _ranges(lo_src, hi_src, group_size, block_size, device):
    """[rows, cols] -> (lo, hi) [rows, cols // group_size] float32, one block per (row, group)."""
    rows, groups = lo_src.shape[0], lo_src.shape[1] // group_size
    lo = torch.empty(rows, groups, dtype=torch.float32, device=device)
    hi = torch.empty(rows, groups, dtype=torch.float32, device=device)
    gpu.launch(group_range_kernel, rows * groups, block_size, lo_src, hi_src, group_size, lo, hi)
    return lo, hi


def quantize_int8(w: torch.Tensor, *, scheme: str = "symmetric", granularity: str = "channel",
                  group_size: int = 128, clip: float = 1.0, block_size: int = 128) -> QuantWeight:
    """w [out, in] fp16/fp32 -> QuantWeight: int8 q [out, in], float32 scales ([1, 1] per tensor,
    [out, 1] per channel, [out, in // group_size] per group), int8 zero points (asymmetric) or None.

    clip in (0, 1] shrinks the range the grid covers (values past it saturate). One block of
    `block_size` threads (a power of two <= 1024) per (row, group). One-line ValueError for bad input.
    """
    gs = check_quantize_args(w, scheme, granularity, group_size, clip)
    if block_size < 1 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two <= {MAX_BLOCK} (the tree halves it), got {block_size}")
    gpu.require_device(w)
    check_finite(w)
    rows, cols = w.shape
    lo, hi = _ranges(w, w, gs, block_size, w.device)
    if granularity == "tensor":                 # one range for the matrix: reduce the rows' ranges
        lo, hi = _ranges(lo.view(1, rows), hi.view(1, rows), rows, block_size, w.device)
    q = torch.empty(rows, cols, dtype=torch.int8, device=w.device)
    scale = torch.empty(lo.shape, dtype=torch.float32, device=w.device)
    zero = torch.empty(lo.shape, dtype=torch.int8, device=w.device)
    symmetric = scheme == "symmetric"
    gpu.launch(quantize_kernel, rows * (cols // gs), block_size, w, gs, lo, hi, symmetric, float(clip),
               q, scale, zero)
    return QuantWeight(q, scale, None if symmetric else zero, gs, scheme, granularity, w.dtype)
