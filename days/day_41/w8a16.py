"""Day 41 -- W8A16: linear(x, w) for int8 weights, dequantized in registers.

A decode step is bound by reading the weights. A `QuantWeight` (day 40) holds them in 1 byte
each plus a float32 scale per row or group (and an int8 zero point, asymmetric), so the GEMV of
day 11 reads half the bytes if it never writes an fp16 copy: each lane loads 16 int8 weights in
one 16-byte load, turns them into floats in registers, and uses

    y[t, n] = sum over groups g of  scale[n, g] * sum_{k in g} x[t, k] * (q[n, k] - zero[n, g])

(fp32 sums, one multiply by the scale per 16 weights, one rounding to x's dtype at the store).
Plain tensors go to the linear of the previous day that provides it (day 11), unchanged.

Lesson: notes/day_41_w8a16_gemv.md        Check: pytest checkers/day_41
"""
import functools

import torch

from shared.quant import QuantWeight
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

from shared.runtime.vector_loads import load8, load8_wide, load16, load16_wide, shfl_down

DAY = 41
WARP = 32
VEC = 16             # int8 weights per lane per step: one 16-byte load
MAX_WARPS = 32       # one partial sum per warp of the largest block (1024 threads)
BUSY_WARPS = 4096    # GEMV: split short matrices' rows over more warps until about this many run
GROUP = 16           # skinny: tokens per block, one fp32 sum each per lane
SKINNY_MAX_T = 16    # "auto": 2 <= T <= this takes the skinny kernel (w read once), more the tiled GEMM
AUTO_SKINNY_MAX_T = 1 if gpu.SIM else SKINNY_MAX_T   # the simulator: as day 11, the GEMM for T > 1
TILE = 16            # GEMM: a TILE x TILE block computes a TILE x TILE tile of y
TILE_PAD = TILE + 1
PATHS = ("auto", "gemv", "skinny", "gemm")


# ---- given: where plain tensors go --------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def previous_linear(track: str):
    """The `linear` this day takes over from: the highest finished day before it that provides
    `linear` (day 11's GEMV / GEMM), else the PyTorch reference. The registry's own rule with this
    day left out (`registry.resolve_before`); resolved once per process, so a decode step pays one
    dictionary lookup."""
    from shared.course import registry
    return registry.resolve_before("linear", track, DAY)


TRACK = __name__.split(".")[0]      # "days" or "solutions": plain tensors stay on this track


# ---- kernels -------------------------------------------------------------------------------------
def make_kernels(load_x, load_q):
    """The GEMV and the skinny kernel, reading x 8 values (`load_x`) and q 16 values (`load_q`) at a
    time. Numba compiles each pair on its own: the 16-byte version carries no code for the other."""

    @cuda.jit(device=True)
    def dot16(x, t, k, qv, zf):
        """sum_j x[t, k + j] * (q_j - zero) over one load's 16 weights, in fp32 (no scale yet)."""
        # TODO(day 41): xa = load_x(x, t, k) and xb = load_x(x, t, k + 8) (8 float32 each); return the fp32 sum
        #   of xa[j] * (qv[j] - zf) and xb[j] * (qv[8 + j] - zf) -- the difference first (exact: integers), then the
        #   product; no scale here, and nothing rounded to fp16.
        return float32(0.0)

    @cuda.jit
    def gemv_kernel(x, q, scale, zero, asym, group_size, out, K, warps_per_row):
        """out[0, n] = sum_k x[0, k] * (q[n, k] - zero[n, g]) * scale[n, g], g = k // group_size,
        with `warps_per_row` warps per row n. Lanes take 16 consecutive k per step (a warp reads 512
        contiguous bytes of q), two steps per iteration so two loads are in flight, then the last
        K % 16 one each. Lanes add up with shuffles, a row's warps through shared memory."""
        # TODO(day 41): day 11's GEMV (gemv_kernel in days/day_11/linear.py) with VEC = 16 int8 weights per step:
        # - the layout: partial (shared, MAX_WARPS float32), lane, warp, n, part, me, threads, acc = 0.
        # - if n < N: sr = the scale row (n, or 0 when scale has one row: per tensor); body = K - K % VEC,
        #   step = threads * VEC, k = me * VEC. While k + step < body: qa = load_q(q, n, k), qb = load_q(q, n, k + step)
        #   (two loads in flight), then for each: g = its k // group_size, zf = float32(zero[sr, g]) if asym else 0,
        #   acc += dot16(x, 0, k, qv, zf) * scale[sr, g]; k += 2 * step. An odd last step alone. The tail
        #   k = body + me, ... < K one weight each: acc += x[0, k] * (q[n, k] - zf) * scale[sr, g], in float32.
        # - every thread (rows past N too): shfl_down over the warp, lane 0 stores partial[warp], cuda.syncthreads(),
        #   lane 0 of the row's first warp adds the row's warps_per_row partials and writes out[0, n] (if n < N).
        pass

    @cuda.jit
    def skinny_kernel(x, q, scale, zero, asym, group_size, out, K, warps_per_row):
        """out[t, n] for the GROUP tokens t of group blockIdx.y, laid out like the GEMV: the 16
        weights a lane loads (and turns into floats) serve every token of the group, so q is read
        once per group of tokens."""
        # TODO(day 41): day 11's skinny kernel with the GEMV above's int8 steps: t0 = blockIdx.y * GROUP; a local
        #   float32 acc[GROUP] zeroed; for each 16-wide step k: qv = load_q(q, n, k) ONCE, its group's zf and scale s,
        #   then acc[t] += dot16(x, t0 + t, k, qv, zf) * s for every slot with t0 + t < T (each token ITS row of x);
        #   the tail one weight each. Then per valid slot: shuffles, partial[warp, t], cuda.syncthreads(), and lane 0
        #   of the row's first warp writes out[t0 + t, n].
        pass

    return gemv_kernel, skinny_kernel


gemv_wide, skinny_wide = make_kernels(load8_wide, load16_wide)   # x and q rows on 16-byte boundaries
gemv_any, skinny_any = make_kernels(load8, load16)               # any alignment, any strides


@cuda.jit
def gemm_kernel(x, q, scale, zero, asym, group_size, out, M, N, K):
    """Day 11's tiled GEMM with the weight tile dequantized as it is staged: ws holds
    (q - zero) * scale in fp32 -- the same float dequantize() computes -- so each int8 weight is
    read once per tile of TILE tokens and the math after staging is day 11's."""
    # TODO(day 41): day 11's gemm_kernel (two shared (TILE, TILE_PAD) float32 tiles, two barriers per step), with
    #   the weight tile staged dequantized: for w_row = blockIdx.x * TILE + ty < N and k < K,
    #   ws[ty, tx] = (float32(q[w_row, k]) - zf) * scale[sr, g] with g = k // group_size (0 outside the matrix).
    pass


def warps_per_row_for(N: int, K: int, warps: int) -> int:
    """Day 11's split for short matrices, counted in 16-weight steps: double the warps per row
    while fewer than about BUSY_WARPS run and each lane keeps two steps."""
    split = 1
    while split < warps and N * split < BUSY_WARPS and K >= 2 * (2 * split) * WARP * VEC:
        split *= 2
    return split


def check_quant_args(x, w: QuantWeight, path, block_size, warps_per_row) -> None:
    """One-line ValueErrors for what a caller can get wrong, before any launch (no value is read)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in (torch.float16, torch.float32):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"linear: x must be float16 or float32 [T, in], got {got}")
    out_f, in_f = w.q.shape
    if x.shape[1] != in_f:
        raise ValueError(f"linear: x is {tuple(x.shape)} but the QuantWeight is [out, in] = {(out_f, in_f)}: "
                         "the `in` sizes differ -- quantize the weight this layer uses")
    if w.granularity == "group" and w.group_size % VEC:
        raise ValueError(f"linear: group_size {w.group_size} is not a multiple of {VEC} (a 16-byte load of q must "
                         "stay inside one group): quantize with group_size 32, 64 or 128")
    if path not in PATHS:
        raise ValueError(f"linear: path must be one of {', '.join(PATHS)}, got {path!r}")
    if block_size < WARP or block_size > WARP * MAX_WARPS or block_size & (block_size - 1):
        raise ValueError(f"linear: block_size must be a power of two from {WARP} to {WARP * MAX_WARPS}, "
                         f"got {block_size}")
    warps = block_size // WARP
    if warps_per_row is not None and (warps_per_row < 1 or warps_per_row > warps
                                      or warps_per_row & (warps_per_row - 1)):
        raise ValueError(f"linear: warps_per_row must be a power of two <= block_size // {WARP} = {warps}, "
                         f"got {warps_per_row}")
    if path == "gemv" and x.shape[0] != 1:
        raise ValueError(f"linear: the gemv path computes one token, got T={x.shape[0]}; use path='skinny'")


def linear(x: torch.Tensor, w, *, path: str | None = None, block_size: int | None = None,
           warps_per_row: int | None = None) -> torch.Tensor:
    """y = x @ w.T for x [T, in] and w [out, in] -> [T, out] in x's dtype.

    w a plain tensor: the previous day's linear (day 11), with the options given. w a QuantWeight
    (int8, symmetric or asymmetric, per tensor / channel / group of a multiple of 16 columns):
    x float16 or float32; path "auto" takes the GEMV at T == 1, the skinny kernel for
    2 <= T <= SKINNY_MAX_T (q read once for up to GROUP tokens) and the tiled GEMM with dequantized
    weight tiles above (the simulator: the GEMM for every T > 1); "gemv" (T == 1), "skinny" (any
    T, one group of GROUP tokens per grid row) and "gemm" force one. block_size (default 128) and
    warps_per_row as day 11's; 16-byte loads when x and q are contiguous, 16-byte aligned and
    in % 16 == 0. Nothing is read back to the host: capture-safe.
    """
    # TODO(day 41): dispatch on the type: not a QuantWeight -> return previous_linear(TRACK)(x, w, **options)
    #   with only the options that are not None (the reference linear takes none). Else:
    # - defaults path "auto", block_size 128; check_quant_args(...) (given: one-line ValueErrors);
    #   gpu.require_device(x, w.q, w.scale); asym = w.zero is not None, and for a symmetric weight pass w.q in the
    #   zero slot (never read; it has zero's type, so one compiled kernel serves both schemes).
    # - out = torch.empty(T, N) in x's dtype (return it as is when T or N is 0); "auto" -> "gemv" at T == 1,
    #   "skinny" for T <= AUTO_SKINNY_MAX_T, else "gemm".
    # - gemm: grid (cdiv(N, TILE), cdiv(T, TILE)), block (TILE, TILE), args (x, q, scale, zero, asym, group_size,
    #   out, T, N, K). gemv / skinny: split = warps_per_row or warps_per_row_for(N, K, warps); the 16-byte kernels
    #   (gemv_wide / skinny_wide) only when x and q are contiguous, K % 16 == 0 and both data pointers are
    #   multiples of 16, else gemv_any / skinny_any; grid cdiv(N, warps // split) (skinny: x cdiv(T, GROUP));
    #   args (x, q, scale, zero, asym, group_size, out, K, split). No .item() or .cpu(): the decode step is captured.
    raise NotImplementedError("Day 41: linear is not written yet -- edit days/day_41/w8a16.py "
                              "(lesson: notes/day_41_w8a16_gemv.md)")
