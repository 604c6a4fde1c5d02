"""Day 11 -- linear: y = x @ w.T with two kernels, picked by the number of tokens.

Decode (T == 1) is a matrix-vector product: every weight is read once and used once, so the
kernel is bound by memory bandwidth -- GEMV reads each row of w with coalesced loads.
Prefill (T > 1) reuses each weight T times: the tiled GEMM stages tiles in shared memory.

Lesson: notes/day_11_linear.md        Check: pytest checkers/day_11
"""
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_BLOCK = 1024  # GEMV scratch: one float per thread of the largest block
TILE = 16         # GEMM: a TILE x TILE block of threads computes a TILE x TILE tile of y
TILE_PAD = TILE + 1  # shared tiles get one spare column: no bank conflicts on ws[tx, kk]


@cuda.jit
def gemv_kernel(x, w, out, K):
    """Block n computes out[0, n] = sum_k x[0, k] * w[n, k]: threads stride over k (coalesced
    reads of row n of w), then a shared-memory tree adds the per-thread partial sums."""
    # TODO(day 11): n = blockIdx.x; each thread sums float32(x[0, k]) * float32(w[n, k]) over
    # k = tid, tid + blockDim.x, ...; put the partial sum in a shared array, tree-reduce it
    # (cuda.syncthreads() before and after every step), and thread 0 writes out[0, n].
    pass


@cuda.jit
def gemm_kernel(x, w, out, M, N, K):
    """Block (bx, by) computes out[by*TILE : +TILE, bx*TILE : +TILE]. Each step stages a TILE x TILE
    tile of x and of w in shared memory (zero-padded at the edges), then every thread
    accumulates TILE products from shared memory."""
    # TODO(day 11): two shared (TILE, TILE_PAD) float32 tiles; row = blockIdx.y * TILE + ty (token),
    # col = blockIdx.x * TILE + tx (output feature). For each k0 in steps of TILE: load
    # x[row, k0 + tx] and w[blockIdx.x * TILE + ty, k0 + tx] (0 outside the matrices),
    # cuda.syncthreads(), accumulate xs[ty, kk] * ws[tx, kk] over kk, cuda.syncthreads().
    # Finally write acc to out[row, col] if it is inside [M, N].
    pass


def linear(x: torch.Tensor, w: torch.Tensor, *, path: str = "auto", block_size: int = 128) -> torch.Tensor:
    """y = x @ w.T for x [T, in], w [out, in] -> [T, out] in x's dtype, fp32 accumulation.

    path "auto" takes GEMV for T == 1 and GEMM otherwise; "gemv" (T must be 1) and "gemm"
    force one. block_size is GEMV's threads per row (a power of two <= 1024); GEMM uses
    TILE x TILE blocks. Raise ValueError (one line) for shapes that do not fit, dtypes that
    differ, an unknown path, or a bad block_size.
    """
    raise NotImplementedError("Day 11: linear is not written yet -- edit days/day_11/linear.py "
                              "(lesson: notes/day_11_linear.md)")
