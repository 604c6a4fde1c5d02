"""Day 54 -- the residual add and the next RMSNorm in one kernel.

Every sub-block ends with `h = h + x` and the next one starts with `rmsnorm(h)`: two launches
that both walk the same row. One block per row does both: add, store h (rounded to its dtype,
as HF's residual add in the model dtype), fold the squares of the stored values, reduce, scale.

Lesson: notes/day_54_fusion.md        Check: pytest checkers/day_54
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32
from numba.core.types import float16

MAX_BLOCK = 1024  # shared-memory scratch size: one float per thread of the largest block


@cuda.jit
def add_rmsnorm_kernel(h, x, weight, out, n, eps, half):
    """One block per row: h += x in place, then out = rmsnorm(h) with day 10's fp32 recipe."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    partial = cuda.shared.array(MAX_BLOCK, float32)

    acc = float32(0.0)                       # 1. add, store h, fold the square of what was stored
    for c in range(tid, n, nthreads):
        s = float32(h[row, c]) + float32(x[row, c])
        h[row, c] = s                        # rounds to h's dtype (fp16: as HF's residual add)
        v = float32(h[row, c])               # the norm reads the rounded h, as HF does
        acc += v * v
    partial[tid] = acc
    cuda.syncthreads()

    step = nthreads // 2                     # 2. tree reduction of the partial sums
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()
        step //= 2

    inv_rms = float32(1.0) / math.sqrt(partial[0] / float32(n) + float32(eps))
    for c in range(tid, n, nthreads):        # 3. scale the columns this thread stored itself
        normed = float32(h[row, c]) * inv_rms
        if half:
            normed = float32(float16(normed))
        out[row, c] = float32(weight[c]) * normed


def add_rmsnorm(h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, *,
                block_size: int = 256) -> torch.Tensor:
    """h += x IN PLACE, then return rmsnorm(h, weight, eps) in h's shape and dtype.

    h, x [..., hidden] of the same shape and dtype (fp16 or fp32), weight [hidden] of that
    dtype. The sum is rounded to h's dtype before the norm reads it (HF adds residuals in the
    model dtype). Raise ValueError (one line) for shapes or dtypes that differ, a weight that is
    not [hidden], an h that cannot be viewed as rows (the update must land in h itself), or a
    block_size that is not a power of two <= 1024. One block of `block_size` threads per row.
    """
    if h.dim() < 1 or x.shape != h.shape:
        raise ValueError(f"add_rmsnorm: h and x must have the same shape [..., hidden], got "
                         f"{tuple(h.shape)} and {tuple(x.shape)}")
    if weight.dim() != 1 or weight.shape[0] != h.shape[-1]:
        raise ValueError(f"add_rmsnorm: weight must be [hidden] = [{h.shape[-1]}], got {tuple(weight.shape)}")
    if h.dtype not in (torch.float16, torch.float32) or x.dtype != h.dtype or weight.dtype != h.dtype:
        raise ValueError(f"add_rmsnorm: h, x, weight are {h.dtype}, {x.dtype}, {weight.dtype}; "
                         "use float16 or float32 for all three")
    if block_size < 1 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"add_rmsnorm: block_size must be a power of two <= {MAX_BLOCK}, got {block_size}")
    gpu.require_device(h, x, weight)
    n = h.shape[-1]
    try:
        rows = h.view(-1, n)                 # a view: the kernel's writes land in h
    except RuntimeError:
        raise ValueError(f"add_rmsnorm: h {tuple(h.shape)} with strides {h.stride()} cannot be viewed as "
                         "[rows, hidden]; make the residual stream contiguous") from None
    out = torch.empty(rows.shape, dtype=h.dtype, device=h.device)
    if rows.shape[0] and n:
        gpu.launch(add_rmsnorm_kernel, rows.shape[0], block_size, rows, x.reshape(-1, n), weight, out, n,
                   float(eps), h.dtype == torch.float16)
    return out.view(h.shape)
