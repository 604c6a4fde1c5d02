"""Day 05 -- y = x @ w.T (PyTorch's Linear layout) two ways: one thread per output, then tiles
of x and w staged in shared memory so each value read from global memory is used TILE times.

Lesson: notes/day_05_matmul.md        Check: pytest checkers/day_05
"""
import functools

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

TILES = (8, 16, 32)   # a tile is one block of TILE x TILE threads (32 x 32 = 1024, the most a block holds)


@cuda.jit
def matmul_naive_kernel(x, w, out):
    """Thread (n, m) computes out[m, n] = sum_k x[m, k] * w[n, k], reading both from global memory."""
    n, m = cuda.grid(2)
    if m < out.shape[0] and n < out.shape[1]:
        acc = float32(0.0)
        for k in range(x.shape[1]):
            acc += float32(x[m, k]) * float32(w[n, k])
        out[m, n] = acc


@functools.cache
def tiled_kernel(tile: int):
    """The tiled kernel for one TILE (shared arrays need their size at compile time)."""
    padded = tile + 1   # computed here, outside the kernel, so Numba sees a constant

    @cuda.jit
    def matmul_tiled_kernel(x, w, out):
        """Block (bx, by) computes out[by*T:(by+1)*T, bx*T:(bx+1)*T], walking K one tile at a time."""
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        m = cuda.blockIdx.y * tile + ty          # this thread's output row
        n = cuda.blockIdx.x * tile + tx          # and column
        w_row = cuda.blockIdx.x * tile + ty      # the row of w this thread loads
        K = x.shape[1]
        xs = cuda.shared.array((tile, tile), float32)
        ws = cuda.shared.array((tile, padded), float32)   # +1 column: ws[tx, j] hits different banks
        acc = float32(0.0)
        for k0 in range(0, K, tile):
            k = k0 + tx                          # neighbouring threads load neighbouring k: coalesced
            xs[ty, tx] = float32(x[m, k]) if m < x.shape[0] and k < K else float32(0.0)
            ws[ty, tx] = float32(w[w_row, k]) if w_row < w.shape[0] and k < K else float32(0.0)
            cuda.syncthreads()                   # the tiles are complete
            for j in range(tile):
                acc += xs[ty, j] * ws[tx, j]
            cuda.syncthreads()                   # everyone is done with them before the next load
        if m < out.shape[0] and n < out.shape[1]:
            out[m, n] = acc

    return matmul_tiled_kernel


def matmul(x: torch.Tensor, w: torch.Tensor, *, tiled: bool = True, tile: int = 16) -> torch.Tensor:
    """y = x @ w.T for x [M, K], w [N, K] of one dtype (float32/float16) -> [M, N] in that dtype.

    Accumulates in float32. `tiled` picks the shared-memory kernel (blocks of tile x tile threads)
    or the naive one (same block shape); `tile` is one of 8, 16, 32.
    """
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"matmul needs x [M, K] and w [N, K] with the same K, got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.dtype != w.dtype or x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"matmul needs x and w both float32 or both float16, got {x.dtype} and {w.dtype}")
    if tile not in TILES:
        raise ValueError(f"tile must be one of {TILES}, got {tile}")
    gpu.require_device(x, w)
    M, N = x.shape[0], w.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M and N:
        kernel = tiled_kernel(tile) if tiled else matmul_naive_kernel
        gpu.launch(kernel, (gpu.cdiv(N, tile), gpu.cdiv(M, tile)), (tile, tile), x, w, out)
    return out
