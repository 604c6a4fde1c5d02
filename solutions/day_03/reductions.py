"""Day 03 -- one block per row: row_sum and row_max with a shared-memory tree reduction.

Lesson: notes/day_03_reductions.md        Check: pytest checkers/day_03
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_BLOCK = 1024   # shared arrays need a size known at compile time: the largest block we allow
WARP = 32


@cuda.jit(device=True)
def combine(a, b, is_max):
    """The reduction's operator: max or +."""
    return max(a, b) if is_max else a + b


@cuda.jit
def row_reduce_kernel(x, out, is_max, use_shuffle):
    """Block `row` reduces x[row, :] into out[row].

    1. Each thread folds a strided slice of the row (c = tid, tid + B, ...) into a register.
    2. The B partial results go to shared memory; a tree halves the active threads each step,
       with a barrier between steps (each step reads what other threads wrote in the last one).
    3. On a GPU the last 32 values are folded by one warp with shuffles (no shared memory, no barrier).
    """
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    partial = cuda.shared.array(MAX_BLOCK, float32)

    acc = float32(-math.inf) if is_max else float32(0.0)   # the identity of the operator
    for c in range(tid, x.shape[1], nthreads):
        acc = combine(acc, float32(x[row, c]), is_max)
    partial[tid] = acc
    cuda.syncthreads()

    stop = WARP if use_shuffle else 1
    s = nthreads // 2
    while s >= stop:
        if tid < s:
            partial[tid] = combine(partial[tid], partial[tid + s], is_max)
        cuda.syncthreads()
        s //= 2

    if use_shuffle:
        if tid < WARP:                     # warp 0 finishes: partial[0..31] -> one value
            v = partial[tid]
            offset = WARP // 2
            while offset > 0:
                v = combine(v, cuda.shfl_down_sync(0xFFFFFFFF, v, offset), is_max)
                offset //= 2
            if tid == 0:
                out[row] = v
    elif tid == 0:
        out[row] = partial[0]


def _row_reduce(x: torch.Tensor, is_max: bool, block_size: int, warp_shuffle) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D [rows, cols] tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"expected float32 or float16, got {x.dtype}")
    if block_size < WARP or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two from {WARP} to {MAX_BLOCK}, got {block_size}")
    use_shuffle = (not gpu.SIM) if warp_shuffle is None else bool(warp_shuffle)
    if use_shuffle and gpu.SIM:
        raise ValueError("warp shuffles do not exist in the simulator: use warp_shuffle=False (or None)")
    gpu.require_device(x)
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    if x.shape[0]:
        gpu.launch(row_reduce_kernel, x.shape[0], block_size, x, out, is_max, use_shuffle)
    return out


def row_sum(x: torch.Tensor, *, block_size: int = 256, warp_shuffle: bool | None = None) -> torch.Tensor:
    """[rows, cols] -> [rows] float32 sums, one block of `block_size` threads per row.

    warp_shuffle: finish with a warp shuffle (GPU only); None = on the GPU, off in the simulator.
    """
    return _row_reduce(x, False, block_size, warp_shuffle)


def row_max(x: torch.Tensor, *, block_size: int = 256, warp_shuffle: bool | None = None) -> torch.Tensor:
    """[rows, cols] -> [rows] float32 maxima (-inf for a row of -inf); see row_sum for the knobs."""
    if x.dim() == 2 and x.shape[1] == 0:
        raise ValueError("row_max of rows with no columns is undefined: give at least one column")
    return _row_reduce(x, True, block_size, warp_shuffle)
