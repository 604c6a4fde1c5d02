"""Day 10 -- RMSNorm: y = weight * (x / sqrt(mean(x^2) + eps)), exactly as HF's LlamaRMSNorm.

Lesson: notes/day_10_rmsnorm.md        Check: pytest checkers/day_10
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32
from numba.core.types import float16

MAX_BLOCK = 1024  # shared-memory scratch size: one float per thread of the largest block


@cuda.jit
def rmsnorm_kernel(x, weight, out, n, eps, half):
    """One block per row: sum of squares (fp32) by a block reduction, then scale every element."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    partial = cuda.shared.array(MAX_BLOCK, float32)

    acc = float32(0.0)                       # 1. each thread: a strided slice of the row
    for c in range(tid, n, nthreads):
        v = float32(x[row, c])
        acc += v * v
    partial[tid] = acc
    cuda.syncthreads()                       # every partial written before anyone reads one

    step = nthreads // 2                     # 2. tree: halve the active threads each step
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()
        step //= 2

    inv_rms = float32(1.0) / math.sqrt(partial[0] / float32(n) + float32(eps))
    for c in range(tid, n, nthreads):        # 3. scale; round to x's dtype before the weight (as HF)
        normed = float32(x[row, c]) * inv_rms
        if half:
            normed = float32(float16(normed))
        out[row, c] = float32(weight[c]) * normed


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, block_size: int = 256) -> torch.Tensor:
    """RMSNorm over the last dim of x [..., hidden] with weight [hidden]; returns x's shape and dtype.

    Raise ValueError (one line) for a weight that is not [hidden], dtypes that differ or are not
    fp16/fp32, or a block_size that is not a power of two <= 1024. One block of `block_size`
    threads per row; `half` tells the kernel to round the normalized value to fp16 as HF does.
    """
    if x.dim() < 1 or weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rmsnorm: weight must be [hidden] = [{x.shape[-1] if x.dim() else '?'}], "
                         f"got weight {tuple(weight.shape)} for x {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.float32) or x.dtype != weight.dtype:
        raise ValueError(f"rmsnorm: x is {x.dtype}, weight is {weight.dtype}; use float16 or float32 for both")
    if block_size < 1 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"rmsnorm: block_size must be a power of two <= {MAX_BLOCK}, got {block_size}")
    gpu.require_device(x, weight)
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0] and n:
        gpu.launch(rmsnorm_kernel, rows.shape[0], block_size, rows, weight, out, n, float(eps),
                   x.dtype == torch.float16)
    return out.view(x.shape)
