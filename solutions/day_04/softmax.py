"""Day 04 -- a numerically stable softmax over each row, in one kernel (one block per row).

Lesson: notes/day_04_softmax.md        Check: pytest checkers/day_04
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_BLOCK = 1024


@cuda.jit(device=True)
def block_reduce(buf, value, is_max):
    """Every thread of the block gets the max (or sum) of all threads' `value` (a day-03 tree)."""
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            a, b = buf[tid], buf[tid + s]
            buf[tid] = max(a, b) if is_max else a + b
        cuda.syncthreads()
        s //= 2
    result = buf[0]
    cuda.syncthreads()   # everyone has read buf[0] before the next reduction overwrites buf
    return result


@cuda.jit
def softmax_kernel(x, out):
    """Block `row`: m = max(x), s = sum(exp(x - m)), out = exp(x - m) / s -- three strided passes."""
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    cols = x.shape[1]
    buf = cuda.shared.array(MAX_BLOCK, float32)

    m = float32(-math.inf)
    for c in range(tid, cols, nthreads):
        m = max(m, float32(x[row, c]))
    m = block_reduce(buf, m, True)
    if m == -math.inf:        # the whole row is masked: exp(x - 0) = 0 everywhere, no inf - inf
        m = float32(0.0)

    s = float32(0.0)
    for c in range(tid, cols, nthreads):
        s += math.exp(float32(x[row, c]) - m)
    s = block_reduce(buf, s, False)
    inv = float32(1.0) / s if s > 0 else float32(0.0)

    for c in range(tid, cols, nthreads):
        out[row, c] = math.exp(float32(x[row, c]) - m) * inv


def softmax(x: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Stable softmax over the last dim of a 2-D float32/float16 tensor, in x's dtype.

    One block of `block_size` threads (a power of two, 32..1024) per row; a row that is all -inf
    gives zeros (nothing to normalise), never NaN.
    """
    if x.dim() != 2:
        raise ValueError(f"softmax takes a 2-D [rows, cols] tensor, got shape {tuple(x.shape)}: reshape it first")
    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"softmax takes float32 or float16, got {x.dtype}")
    if block_size < 32 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two from 32 to {MAX_BLOCK}, got {block_size}")
    gpu.require_device(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0] and x.shape[1]:
        gpu.launch(softmax_kernel, x.shape[0], block_size, x, out)
    return out
