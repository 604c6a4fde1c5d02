"""Day 11 -- linear: y = x @ w.T with two kernels, picked by the number of tokens.

Decode (T == 1) is a matrix-vector product: every weight is read once and used once, so the
kernel is bound by memory bandwidth. The GEMV gives each row of w to a warp (or a few warps),
reads it 16 bytes per thread per load, and keeps the sums in fp32.
A few tokens (speculative verify, batched decode: 2 <= T <= 64) are still bound by reading w:
the skinny GEMM is the GEMV with GROUP sums per lane, so w is read once per 8 tokens.
Prefill (T > 64) reuses each weight T times: the tiled GEMM stages tiles in shared memory.

Lesson: notes/day_11_linear.md        Check: pytest checkers/day_11
"""
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

from shared.runtime.vector_loads import load8, load8_wide, shfl_down

WARP = 32
VEC = 8              # GEMV: each lane takes 8 consecutive k per step (16 bytes of fp16)
MAX_WARPS = 32       # GEMV scratch: one partial sum per warp of the largest block (1024 threads)
BUSY_WARPS = 4096    # GEMV: split short matrices' rows over more warps until about this many run
GROUP = 8            # skinny GEMM: tokens per block, one fp32 sum each per lane (registers)
SKINNY_MAX_T = 64    # path "auto": 2 <= T <= this takes the skinny GEMM, more tokens the tiled GEMM
# ... on a GPU. The simulator runs every thread in Python, where the skinny kernel's many threads and
# per-token shuffles cost ~25x the tiled GEMM (the engine's prefill in every later checker would
# crawl): there "auto" keeps the GEMM for T > 1, and the checker asks for path="skinny" by name.
AUTO_SKINNY_MAX_T = 1 if gpu.SIM else SKINNY_MAX_T
TILE = 16            # GEMM: a TILE x TILE block of threads computes a TILE x TILE tile of y
TILE_PAD = TILE + 1  # shared tiles get one spare column: no bank conflicts on ws[tx, kk]


def make_gemv_kernel(load):
    """The GEMV kernel, reading 8 values at a time with `load` (load8_wide or load8). Numba
    compiles each version on its own, so the 16-byte one carries no code for the other case."""

    @cuda.jit
    def gemv_kernel(x, w, out, K, warps_per_row):
        """out[0, n] = sum_k x[0, k] * w[n, k], with `warps_per_row` warps per row n.

        The threads of a row take 8 consecutive k each per step (a warp reads 512 contiguous
        bytes of fp16), two steps per iteration so two loads are in flight, then the last K % 8
        values one each. Lanes add up with shuffles, a row's warps through shared memory."""
        # TODO(day 11): a shared float32 array [MAX_WARPS] for the warps' sums (declare it first).
        # lane = threadIdx.x % WARP, warp = threadIdx.x // WARP; a block holds
        # blockDim.x // WARP // warps_per_row rows: n = blockIdx.x * that + warp // warps_per_row,
        # part = warp % warps_per_row, me = part * WARP + lane (rank among the row's threads).
        # If n < N: with step = threads * VEC and body = K - K % VEC, start at k = me * VEC and,
        # while k + step < body, load w (and x) at k and at k + step -- two 16-byte loads in
        # flight -- add their 16 products to an fp32 acc, k += 2 * step; if k < body is left, one
        # more 8-wide step; then the tail k = body + me, ... < K one value each. EVERY thread
        # (rows past N too) then folds acc over its warp with shfl_down(acc, 16 / 8 / 4 / 2 / 1);
        # lane 0 puts it in the shared array at [warp], cuda.syncthreads(), and lane 0 of the
        # row's first warp adds the row's warps_per_row partials and writes out[0, n] (if n < N).
        pass

    return gemv_kernel


gemv_wide = make_gemv_kernel(load8_wide)  # rows (and x) start on 16-byte boundaries
gemv_any = make_gemv_kernel(load8)        # any alignment, any strides


def make_skinny_kernel(load):
    """The skinny GEMM for a few tokens (2 <= T <= SKINNY_MAX_T), reading with `load`."""

    @cuda.jit
    def skinny_kernel(x, w, out, K, warps_per_row):
        """out[t, n] for the GROUP tokens t of group blockIdx.y, laid out like the GEMV: each 8
        values of row n a lane loads serve every token of the group (one sum per token in
        registers), so w is read once per group of tokens, not once per token."""
        # TODO(day 11): the GEMV's layout (n, part, me, threads) and t0 = blockIdx.y * GROUP, the
        # group's first token. Shared float32 [MAX_WARPS, GROUP] for the warps' sums; a local
        # float32 array acc[GROUP] (cuda.local.array), zeroed. If n < N: for each 8-wide step k,
        # load w's 8 values ONCE, then for every t < GROUP with t0 + t < T add the 8 products with
        # load(x, t0 + t, k) to acc[t]; the tail the same, one value each. Then for each token
        # slot with t0 + t < T (the same for the whole block), fold acc[t] over the warp with
        # shfl_down and lane 0 stores it at [warp, t]; cuda.syncthreads(); lane 0 of the row's
        # first warp writes out[t0 + t, n] = the sum of the row's warps (only n < N, t0 + t < T).
        pass

    return skinny_kernel


skinny_wide = make_skinny_kernel(load8_wide)
skinny_any = make_skinny_kernel(load8)


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


def gemv_warps_per_row(N: int, K: int, warps: int) -> int:
    """A warp per row is enough for a tall matrix; a short one (N = 512) would keep only a few
    hundred warps busy: too few loads in flight to keep memory busy. Split each row's k over
    more warps until about BUSY_WARPS run, keeping at least two 8-wide steps per lane."""
    # TODO(day 11): start at 1 and double while it is < warps, N * split < BUSY_WARPS and each
    # lane would still get two steps after doubling (K >= 2 * (2 * split) * WARP * VEC).
    raise NotImplementedError("Day 11: gemv_warps_per_row is not written yet -- edit days/day_11/linear.py "
                              "(lesson: notes/day_11_linear.md, 'Making it fast')")


def linear(x: torch.Tensor, w: torch.Tensor, *, path: str = "auto", block_size: int = 128,
           warps_per_row: int | None = None) -> torch.Tensor:
    """y = x @ w.T for x [T, in], w [out, in] -> [T, out] in x's dtype, fp32 accumulation.

    path "auto" takes the GEMV for T == 1, the skinny GEMM for 2 <= T <= SKINNY_MAX_T and the
    tiled GEMM for more (the simulator: the GEMM for every T > 1, see AUTO_SKINNY_MAX_T);
    "gemv" (T must be 1), "skinny" (any T >= 1) and "gemm" force one. GEMV and skinny:
    block_size threads per block (a power of two from 32 to 1024), and warps_per_row warps
    per output row (a power of two <= block_size // 32; None picks one from the shape),
    16-byte loads when x and w are contiguous and 16-byte aligned. GEMM uses TILE x TILE blocks. Raise ValueError (one line) for shapes that do not fit, dtypes that
    differ, an unknown path, or a bad launch configuration.
    """
    raise NotImplementedError("Day 11: linear is not written yet -- edit days/day_11/linear.py "
                              "(lesson: notes/day_11_linear.md)")
