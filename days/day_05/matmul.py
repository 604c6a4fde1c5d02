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
    # TODO(day 05): n, m = cuda.grid(2); guard against out.shape; a float32 sum over k; store it.
    pass


@functools.cache
def tiled_kernel(tile: int):
    """The tiled kernel for one TILE (shared arrays need their size at compile time)."""
    padded = tile + 1   # computed here, outside the kernel, so Numba sees a constant

    @cuda.jit
    def matmul_tiled_kernel(x, w, out):
        """Block (bx, by) computes out[by*T:(by+1)*T, bx*T:(bx+1)*T], walking K one tile at a time."""
        # TODO(day 05): two float32 shared tiles, xs (tile, tile) and ws (tile, padded);
        # for each k0: thread (tx, ty) loads x[m, k0 + tx] and w[bx*tile + ty, k0 + tx] (0 past the edges),
        # syncthreads, acc += sum_j xs[ty, j] * ws[tx, j], syncthreads; finally a guarded store.
        pass

    return matmul_tiled_kernel


def matmul(x: torch.Tensor, w: torch.Tensor, *, tiled: bool = True, tile: int = 16) -> torch.Tensor:
    """y = x @ w.T for x [M, K], w [N, K] of one dtype (float32/float16) -> [M, N] in that dtype.

    Accumulates in float32. `tiled` picks the shared-memory kernel (blocks of tile x tile threads)
    or the naive one (same block shape); `tile` is one of 8, 16, 32.
    """
    raise NotImplementedError("Day 05: matmul is not written yet -- edit days/day_05/matmul.py "
                              "(lesson: notes/day_05_matmul.md)")
