"""Day 48 -- linear for a batch of decode tokens: the skinny GEMM on tensor cores.

A batched decode step (B sequences, one token each) and a speculative verify (K + 1 tokens) run
every linear layer on a handful of rows: x [T, in] with 2 <= T <= 64. Reading w is still the
whole cost, so w must be read once for all T tokens -- and then the math must keep up with the
memory: on CUDA cores each weight costs T multiply-adds plus the conversions of x, more than an
H100 can issue at 3 TB/s once T passes a few tokens. Day 26's tensor-core mma does 16 x 16 x 8
multiply-adds per instruction, so it turns the product around ("swap AB"):

    out^T [N, T] = w [N, K] @ x^T [K, T]:   A = 16 rows of w,   B = 8 tokens of x,   C = 16 x 8

A warp owns 16 rows of w and up to 32 tokens (TB tiles of 8). Each step it reads 32 columns of
its rows: lane (g, t) loads 16 bytes of row g and of row g + 8 at column 8t, and 16 bytes of
token g of every tile at the same columns. The sum over k does not care in which order the
columns are added, so those 8 columns become the 4 fragment words of two mmas, the same way for
A and B (the columns 8t..8t+7 play the roles of 2t, 2t+1, 2t+8, 2t+9 of one mma and of the next).
Short matrices split K over `split` warps of a block, which add up through shared memory.
Anything else -- fp32, a QuantWeight, one token, more than SKINNY_MAX_T, a K that is not a
multiple of 32, unaligned rows -- goes to the linear of the previous day that provides it.

Lesson: notes/day_48_batched_decode.md ("Making it fast: B tokens, one read of w")
Check: pytest checkers/day_48
"""
import functools

import torch

from shared.course.registry import resolve_before
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, uint32

from shared.runtime.mma import load8_pairs_wide, mma_f16

DAY = 48
WARP = 32
CHUNK = 32           # columns of w per chunk: 4 lanes x 8 per row (one 16-byte load per lane and row)
STEP_CHUNKS = 4      # chunks per step: 8 loads of w per lane in flight before the mmas use them
ROWS = 16            # rows of w per warp: the A operand of one mma
TOKENS = 8           # tokens per tile: the B operand of one mma
MAX_TB = 4           # tiles per warp: 32 tokens; more tokens take more blocks
MAX_SUMS = 4 * MAX_TB  # fp32 sums per lane: 4 per tile (a shape numba must see as one constant)
MAX_WARPS = 8        # blocks of at most 256 threads (the split-K scratch below)
SKINNY_MAX_T = 64    # path "auto": 2 <= T <= this takes the tensor cores (on a GPU; the simulator
# runs each mma as Python for every thread, so there "auto" leaves every T to the previous day and the
# checker asks for path="mma" by name, as day 11 does for its skinny kernel)
AUTO_SKINNY_MAX_T = 1 if gpu.SIM else SKINNY_MAX_T
BUSY_WARPS = 2048    # split K over more warps until about this many run (each has 4 KB of w in flight)
PATHS = ("auto", "mma")   # this day's paths; any other goes to the previous linear with its options
TRACK = __name__.split(".")[0]      # "days" or "solutions": what this day does not take stays on this track


@functools.lru_cache(maxsize=None)
def previous_linear():
    """The `linear` this day takes over from (day 41's int8 dispatch, day 11's GEMV / GEMM, or
    the PyTorch reference): the registry's rule with this day left out, resolved once per process."""
    return resolve_before("linear", TRACK, DAY)


@cuda.jit(device=True)
def load_rows(w, ra, rb, c, chunks, tq):
    """Chunk c of rows ra and rb: this lane's 8 columns c * CHUNK + 8 tq .. + 7 of each, as the
    A operand's words (row g: a0 / a2, row g + 8: a1 / a3). Past the last chunk: zeros (they add
    nothing, and every lane still runs the step)."""
    # TODO(day 48): c < chunks: return load8_pairs_wide(w, ra, k), load8_pairs_wide(w, rb, k) with k = c * CHUNK + 8 * tq;
    #   else two tuples of four uint32 zeros.
    zero = (uint32(0), uint32(0), uint32(0), uint32(0))
    return zero, zero

@cuda.jit(device=True)
def chunk_mma(wa, wb, x, tok, c, chunks, tq, d):
    """d += (16 rows x chunk c) @ (chunk c x 8 tokens): token tok's same 8 columns as the B
    operand, words 0, 1 into one mma and 2, 3 into the next, as the A words were. A chunk past
    the end reads chunk 0 of x (in bounds) against zero words of w."""
    # TODO(day 48): xv = load8_pairs_wide(x, tok, k) at the same k as load_rows (chunk 0 when c >= chunks: in
    #   bounds, and w's zeros cancel it); then two mma_f16: A = (wa[0], wb[0], wa[1], wb[1]) with B = (xv[0], xv[1]),
    #   then A = (wa[2], wb[2], wa[3], wb[3]) with B = (xv[2], xv[3]), C = d, and return the second result.
    #   A's word j and B's word j must hold the SAME two columns: that is all the layout asks.
    return d

def make_kernel(TB):
    """The kernel for TB tiles of 8 tokens per warp (TB is a compile-time constant: the loops
    over tiles unroll and the 4 * TB sums stay in registers)."""

    @cuda.jit
    def skinny_mma_kernel(x, w, out, K, split, groups):
        """out[t, n] = sum_k x[t, k] * w[n, k]: warp (tile of 16 rows, part of K) x (group of
        8 * TB tokens). Every lane runs the same number of steps (the mma is warp-wide, and the
        simulator's needs every thread of the block): a step past the end of K adds zeros."""
        # TODO(day 48): the layout: red = shared (MAX_WARPS, MAX_SUMS, WARP) float32 (the split-K sums); lane, warp;
        #   g = lane // 4 and tq = lane % 4; group = blockIdx.x % groups (token group), the tile of 16 rows
        #   = (blockIdx.x // groups) * (warps per block // split) + warp // split, part = warp % split;
        #   n0 = tile * ROWS, t0 = group * TOKENS * TB; rows ra = n0 + g and rb = n0 + g + 8, each clamped to N - 1
        #   (loaded, never stored); acc = local float32 [MAX_SUMS], the first 4 * TB set to 0.
        # - chunks = K // CHUNK; steps = cdiv(chunks, STEP_CHUNKS * split), the SAME for every lane of the block (the
        #   mma is warp-wide). Step s: this part's chunks c = s * STEP_CHUNKS * split + part, c + split, c + 2 split,
        #   c + 3 split: load_rows for all four FIRST (eight loads in flight), then for each tile b < TB:
        #   tok = min(t0 + TOKENS * b + g, T - 1), d = acc[4b .. 4b + 3], four chunk_mma, back into acc.
        # - split > 1: every part writes its 4 * TB sums to red[warp, i, lane], cuda.syncthreads(), and adds the
        #   split parts of its tile (warps warp - part .. warp - part + split - 1).
        # - part 0 stores: sums 0, 1 are row n0 + g, tokens t = t0 + 8b + 2tq and t + 1; sums 2, 3 row n0 + g + 8.
        #   Store only n < N and t < T.
        pass

    return skinny_mma_kernel


KERNELS = {tb: make_kernel(tb) for tb in (1, 2, 4)}


def fits(x: torch.Tensor, w) -> bool:
    """Whether the tensor-core kernel takes x and w: fp16 tensors, K a multiple of 32, contiguous
    rows on 16-byte boundaries (its loads are 16 bytes wide)."""
    return (isinstance(w, torch.Tensor) and x.dim() == 2 and w.dim() == 2 and x.shape[1] == w.shape[1]
            and x.dtype == w.dtype == torch.float16 and x.shape[1] % CHUNK == 0
            and x.is_contiguous() and w.is_contiguous() and x.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0)


def split_for(tiles: int, K: int, warps: int) -> int:
    """Warps per tile of rows: double while fewer than BUSY_WARPS warps run and each still has a
    whole step of chunks of its own."""
    split = 1
    while split * 2 <= warps and tiles * split < BUSY_WARPS and K >= STEP_CHUNKS * CHUNK * (2 * split):
        split *= 2
    return split


def linear(x: torch.Tensor, w, *, path: str | None = None, block_size: int | None = None,
           warps_per_row: int | None = None) -> torch.Tensor:
    """y = x @ w.T for x [T, in], w [out, in] -> [T, out] in x's dtype, fp32 sums.

    path None / "auto": fp16 x and w that `fits`, with 2 <= T <= SKINNY_MAX_T, take the
    tensor-core kernel (on a GPU: see AUTO_SKINNY_MAX_T); everything else (and any other path,
    with the options given) goes to the previous day's linear. path "mma" forces the tensor-core kernel for any T >= 1 (ValueError,
    one line, if x and w do not fit). block_size: 32..256 threads, a power of two (default 256);
    warps_per_row: warps that split K for one tile of 16 rows (a power of two <= block_size / 32;
    None picks one). Nothing is read back to the host: capture-safe.
    """
    # TODO(day 48): dispatch first: a path that is not None or in PATHS -> previous_linear()(x, w, **_options(path,
    #   block_size, warps_per_row)); path None / "auto" with T outside 2..AUTO_SKINNY_MAX_T or not fits(x, w) -> the
    #   same with _options(None, ...). path "mma" with x, w that do not fit: one-line ValueError.
    # - block_size default 256, a power of two from 32 to WARP * MAX_WARPS; warps_per_row None or a power of two
    #   <= block_size // 32 (one-line ValueErrors); gpu.require_device(x, w); out = torch.empty(T, N) in x's dtype
    #   (as it is when T or N is 0; zeros when K is 0).
    # - tb = 1, 2 or 4 tiles of 8 tokens (the smallest power of two covering cdiv(T, 8), at most MAX_TB);
    #   groups = cdiv(T, 8 * tb); tiles = cdiv(N, ROWS); split = warps_per_row or split_for(tiles, K, warps);
    #   launch KERNELS[tb] on cdiv(tiles, warps // split) * groups blocks of block_size threads with
    #   (x, w, out, K, split, groups). No .item() or .cpu(): the step is captured in a graph.
    raise NotImplementedError("Day 48: linear is not written yet -- edit days/day_48/skinny_linear.py "
                              "(lesson: notes/day_48_batched_decode.md, \"Making it fast\")")


def _options(path, block_size, warps_per_row) -> dict:
    return {k: v for k, v in (("path", path), ("block_size", block_size), ("warps_per_row", warps_per_row))
            if v is not None}


def _describe(t) -> str:
    return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
