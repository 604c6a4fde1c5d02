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
    n = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    partial = cuda.shared.array(MAX_BLOCK, float32)

    acc = float32(0.0)
    for k in range(tid, K, nthreads):
        acc += float32(x[0, k]) * float32(w[n, k])
    partial[tid] = acc
    cuda.syncthreads()
    step = nthreads // 2
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        out[0, n] = partial[0]


@cuda.jit
def gemm_kernel(x, w, out, M, N, K):
    """Block (bx, by) computes out[by*TILE : +TILE, bx*TILE : +TILE]. Each step stages a TILE x TILE
    tile of x and of w in shared memory (zero-padded at the edges), then every thread
    accumulates TILE products from shared memory."""
    xs = cuda.shared.array((TILE, TILE_PAD), float32)   # shapes must be compile-time constants
    ws = cuda.shared.array((TILE, TILE_PAD), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty                   # token
    col = cuda.blockIdx.x * TILE + tx                   # output feature
    w_row = cuda.blockIdx.x * TILE + ty                 # the row of w this thread loads

    acc = float32(0.0)
    for k0 in range(0, K, TILE):
        k = k0 + tx                                     # neighbouring threads load neighbouring k
        xs[ty, tx] = float32(x[row, k]) if row < M and k < K else float32(0.0)
        ws[ty, tx] = float32(w[w_row, k]) if w_row < N and k < K else float32(0.0)
        cuda.syncthreads()                              # the tiles are complete
        for kk in range(TILE):
            acc += xs[ty, kk] * ws[tx, kk]
        cuda.syncthreads()                              # everyone is done before the next load
    if row < M and col < N:
        out[row, col] = acc


def linear(x: torch.Tensor, w: torch.Tensor, *, path: str = "auto", block_size: int = 128) -> torch.Tensor:
    """y = x @ w.T for x [T, in], w [out, in] -> [T, out] in x's dtype, fp32 accumulation.

    path "auto" takes GEMV for T == 1 and GEMM otherwise; "gemv" (T must be 1) and "gemm"
    force one. block_size is GEMV's threads per row (a power of two <= 1024); GEMM uses
    TILE x TILE blocks. Raise ValueError (one line) for shapes that do not fit, dtypes that
    differ, an unknown path, or a bad block_size.
    """
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: need x [T, in] and w [out, in] with the same `in`, "
                         f"got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if x.dtype != w.dtype:
        raise ValueError(f"linear: x is {x.dtype} but w is {w.dtype}; cast one so they match")
    if path not in ("auto", "gemv", "gemm"):
        raise ValueError(f"linear: path must be 'auto', 'gemv' or 'gemm', got {path!r}")
    if block_size < 1 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"linear: block_size must be a power of two <= {MAX_BLOCK}, got {block_size}")
    T, K = x.shape
    N = w.shape[0]
    if path == "gemv" and T != 1:
        raise ValueError(f"linear: the gemv path computes one token, got T={T}; use path='gemm'")
    gpu.require_device(x, w)
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    if path == "gemv" or (path == "auto" and T == 1):
        gpu.launch(gemv_kernel, N, block_size, x, w, out, K)
    else:
        gpu.launch(gemm_kernel, (gpu.cdiv(N, TILE), gpu.cdiv(T, TILE)), (TILE, TILE), x, w, out, T, N, K)
    return out
