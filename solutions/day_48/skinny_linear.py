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
    if c < chunks:
        return load8_pairs_wide(w, ra, c * CHUNK + 8 * tq), load8_pairs_wide(w, rb, c * CHUNK + 8 * tq)
    zero = (uint32(0), uint32(0), uint32(0), uint32(0))
    return zero, zero


@cuda.jit(device=True)
def chunk_mma(wa, wb, x, tok, c, chunks, tq, d):
    """d += (16 rows x chunk c) @ (chunk c x 8 tokens): token tok's same 8 columns as the B
    operand, words 0, 1 into one mma and 2, 3 into the next, as the A words were. A chunk past
    the end reads chunk 0 of x (in bounds) against zero words of w."""
    xv = load8_pairs_wide(x, tok, (c if c < chunks else 0) * CHUNK + 8 * tq)
    d = mma_f16(wa[0], wb[0], wa[1], wb[1], xv[0], xv[1], d[0], d[1], d[2], d[3])
    return mma_f16(wa[2], wb[2], wa[3], wb[3], xv[2], xv[3], d[0], d[1], d[2], d[3])


def make_kernel(TB):
    """The kernel for TB tiles of 8 tokens per warp (TB is a compile-time constant: the loops
    over tiles unroll and the 4 * TB sums stay in registers)."""

    @cuda.jit
    def skinny_mma_kernel(x, w, out, K, split, groups):
        """out[t, n] = sum_k x[t, k] * w[n, k]: warp (tile of 16 rows, part of K) x (group of
        8 * TB tokens). Every lane runs the same number of steps (the mma is warp-wide, and the
        simulator's needs every thread of the block): a step past the end of K adds zeros."""
        red = cuda.shared.array((MAX_WARPS, MAX_SUMS, WARP), float32)   # split-K partial sums
        T, N = out.shape
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        g = lane // 4                          # the row (of A) / token (of B) this lane loads
        tq = lane % 4                          # which 8 of the chunk's 32 columns
        group = cuda.blockIdx.x % groups       # groups of the same rows are neighbours: w stays in L2
        tile = (cuda.blockIdx.x // groups) * (cuda.blockDim.x // WARP // split) + warp // split
        part = warp % split
        n0 = tile * ROWS
        t0 = group * TOKENS * TB
        ra = min(n0 + g, N - 1)                # rows past N load row N - 1 and are never stored
        rb = min(n0 + g + 8, N - 1)
        acc = cuda.local.array(MAX_SUMS, float32)
        for i in range(4 * TB):
            acc[i] = float32(0.0)

        chunks = K // CHUNK
        steps = (chunks + STEP_CHUNKS * split - 1) // (STEP_CHUNKS * split)
        for s in range(steps):                 # four chunks per step: eight 16-byte loads of w in flight
            c = s * STEP_CHUNKS * split + part     # this part's chunks: c, c + split, c + 2 split, c + 3 split
            wa0, wb0 = load_rows(w, ra, rb, c, chunks, tq)
            wa1, wb1 = load_rows(w, ra, rb, c + split, chunks, tq)
            wa2, wb2 = load_rows(w, ra, rb, c + 2 * split, chunks, tq)
            wa3, wb3 = load_rows(w, ra, rb, c + 3 * split, chunks, tq)
            for b in range(TB):
                tok = min(t0 + TOKENS * b + g, T - 1)   # tokens past T repeat the last; never stored
                d = (acc[4 * b], acc[4 * b + 1], acc[4 * b + 2], acc[4 * b + 3])
                d = chunk_mma(wa0, wb0, x, tok, c, chunks, tq, d)
                d = chunk_mma(wa1, wb1, x, tok, c + split, chunks, tq, d)
                d = chunk_mma(wa2, wb2, x, tok, c + 2 * split, chunks, tq, d)
                d = chunk_mma(wa3, wb3, x, tok, c + 3 * split, chunks, tq, d)
                acc[4 * b] = d[0]
                acc[4 * b + 1] = d[1]
                acc[4 * b + 2] = d[2]
                acc[4 * b + 3] = d[3]

        if split > 1:                          # the same for the whole block
            for i in range(4 * TB):
                red[warp, i, lane] = acc[i]
            cuda.syncthreads()                 # every part's sums are in place
            for i in range(4 * TB):
                total = float32(0.0)
                for p in range(split):
                    total += red[warp - part + p, i, lane]
                acc[i] = total

        if part == 0:                          # C: row g (sums 0, 1) and g + 8 (2, 3), tokens 2tq, 2tq + 1
            for b in range(TB):
                t = t0 + TOKENS * b + 2 * tq
                for half in range(2):
                    n = n0 + g + 8 * half
                    if n < N and t < T:
                        out[t, n] = acc[4 * b + 2 * half]
                    if n < N and t + 1 < T:
                        out[t + 1, n] = acc[4 * b + 2 * half + 1]

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
    if path is not None and path not in PATHS:
        return previous_linear()(x, w, **_options(path, block_size, warps_per_row))
    T = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 2 else 0
    if path != "mma" and not (2 <= T <= AUTO_SKINNY_MAX_T and fits(x, w)):
        return previous_linear()(x, w, **_options(None, block_size, warps_per_row))
    if not fits(x, w):
        raise ValueError(f"linear path='mma': needs fp16 x [T, in] and w [out, in], in % {CHUNK} == 0, contiguous "
                         f"and 16-byte aligned; got x {_describe(x)} and w {_describe(w)} -- use path='auto'")
    block_size = 256 if block_size is None else block_size
    if block_size < WARP or block_size > WARP * MAX_WARPS or block_size & (block_size - 1):
        raise ValueError(f"linear: block_size must be a power of two from {WARP} to {WARP * MAX_WARPS} on the "
                         f"tensor-core path, got {block_size}")
    warps = block_size // WARP
    if warps_per_row is not None and (warps_per_row < 1 or warps_per_row > warps
                                      or warps_per_row & (warps_per_row - 1)):
        raise ValueError(f"linear: warps_per_row must be a power of two <= block_size // {WARP} = {warps}, "
                         f"got {warps_per_row}")
    gpu.require_device(x, w)
    K = x.shape[1]
    N = w.shape[0]
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    tb = min(MAX_TB, 1 << (gpu.cdiv(T, TOKENS) - 1).bit_length())      # 1, 2 or 4 tiles of 8 tokens
    groups = gpu.cdiv(T, TOKENS * tb)
    tiles = gpu.cdiv(N, ROWS)
    split = warps_per_row or split_for(tiles, K, warps)
    blocks = gpu.cdiv(tiles, warps // split) * groups
    gpu.launch(KERNELS[tb], blocks, block_size, x, w, out, K, split, groups)
    return out


def _options(path, block_size, warps_per_row) -> dict:
    return {k: v for k, v in (("path", path), ("block_size", block_size), ("warps_per_row", warps_per_row))
            if v is not None}


def _describe(t) -> str:
    return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
