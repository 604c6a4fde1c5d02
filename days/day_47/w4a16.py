"""Day 47 -- W4A16: linear(x, w) for 4-bit Q4_1 weights, unpacked in registers.

A `Q4Weight` (shared/q4.py) holds 32 weights of a row in 16 bytes of nibbles plus an fp16 d and
m per block: 5 bits a weight where day 41 read 8 and fp16 reads 16. The decode GEMV reads a
block's 16 bytes in ONE 16-byte load (four 32-bit words), takes the nibbles out with shifts and
masks -- byte j of a block: weight j in the low nibble, weight j + 16 in the high one -- and uses

    y[n] = sum over blocks b of  d[n, g] * sum_{k in b} x[k] * nibble[n, k]  +  m[n, g] * sum_{k in b} x[k]

(g = the block's group; fp32 sums; the minimum m multiplies the sum of x, not every weight).
T > 1 (prefill, verify, batches): dequantize the weight to x's dtype for this call, then the
previous day's linear -- a copy per call, not kept (prefill speed is not this day's target).
Plain tensors and day 40's QuantWeights go to the previous day's linear, unchanged.

Lesson: notes/day_47_w4a16.md        Check: pytest checkers/day_47
"""
import functools

import torch

from shared.q4 import BLOCK, Q4Weight, dequantize
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

from shared.runtime.dp4a import load4_words_wide
from shared.runtime.vector_loads import load8, load8_wide, shfl_down

DAY = 47
WARP = 32
MAX_WARPS = 32       # one partial sum per warp of the largest block (1024 threads)
BUSY_WARPS = 4096    # split short matrices' rows over more warps until about this many run
WORDS = BLOCK // 8   # 32-bit words of nibbles per block: 4 (one 16-byte load)


# ---- given: where everything but a Q4Weight goes -------------------------------------------------
@functools.lru_cache(maxsize=None)
def previous_linear(track: str):
    """The `linear` this day takes over from (day 43's, 41's or 11's, whichever is the highest
    finished day before this one), resolved once per process."""
    from shared.course import registry
    return registry.resolve_before("linear", track, DAY)


TRACK = __name__.split(".")[0]      # "days" or "solutions"


# ---- the kernel -----------------------------------------------------------------------------------
@cuda.jit(device=True)
def load4_words(a, row, j):
    """a[row, j : j + 4] (int32), element by element: any alignment (day 43's load4_words_wide is
    the one 16-byte load)."""
    return a[row, j], a[row, j + 1], a[row, j + 2], a[row, j + 3]


def make_gemv(load_x, load_w):
    """The GEMV reading x 8 values at a time (`load_x`) and a block's nibbles as 4 words (`load_w`)."""

    @cuda.jit(device=True)
    def block_dot(x, k, words):
        """(sum_j x[k + j] * nibble_j, sum_j x[k + j]) over one block's 32 weights, in fp32."""
        # TODO(day 47): for h in (0, 1) -- h = 0 the low nibbles (weights k .. k + 15), h = 1 the high ones
        #   (weights k + 16 .. k + 31): xa = load_x(x, 0, k + 16 h), xb = load_x(x, 0, k + 16 h + 8). Word j of
        #   `words` holds bytes 4j .. 4j + 3 (the lowest byte first); byte i's nibble h is
        #   (words[i // 4] >> (8 (i % 4) + 4 h)) & 0xF -- UNSIGNED 0..15. s += x_i * float32(nibble), sx += x_i,
        #   all in float32 (x_i = xa[i] for i < 8, else xb[i - 8]). No d and m here.
        return float32(0.0), float32(0.0)

    @cuda.jit
    def gemv_kernel(x, qw, d, m, group_size, out, K, warps_per_row):
        """out[0, n] = sum over blocks of d * (x . nibbles) + m * sum(x), `warps_per_row` warps per
        row n; each lane takes whole blocks, a warp reads 512 contiguous bytes of nibbles."""
        # TODO(day 47): day 41's GEMV with a BLOCK of 32 weights per step instead of 16 int8 ones:
        # - the layout: partial (shared, MAX_WARPS float32), lane, warp, n, part, me, threads, acc = 0.
        # - if n < N: for each block b = me, me + threads, ... < K // BLOCK: k = b * BLOCK,
        #   (s, sx) = block_dot(x, k, load_w(qw, n, WORDS * b)) (one 16-byte load: the block's four words),
        #   g = k // group_size (the block's group), acc += float32(d[n, g]) * s + float32(m[n, g]) * sx.
        # - every thread (rows past N too): shfl_down over the warp, lane 0 stores partial[warp], cuda.syncthreads(),
        #   lane 0 of the row's first warp adds the row's warps_per_row partials and writes out[0, n] (if n < N).
        pass

    return gemv_kernel


gemv_wide = make_gemv(load8_wide, load4_words_wide)   # x and the nibbles on 16-byte boundaries
gemv_any = make_gemv(load8, load4_words)              # any alignment


def warps_per_row_for(N: int, K: int, warps: int) -> int:
    """Day 11's split for short matrices, in blocks: double the warps per row while fewer than
    about BUSY_WARPS run and each lane keeps two blocks."""
    split = 1
    while split < warps and N * split < BUSY_WARPS and K >= 2 * (2 * split) * WARP * BLOCK:
        split *= 2
    return split


def check_args(x, w: Q4Weight, block_size, warps_per_row) -> None:
    """One-line ValueErrors before any launch (no value is read)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in (torch.float16, torch.float32):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"linear: x must be float16 or float32 [T, in], got {got}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x is {tuple(x.shape)} but the Q4Weight is [out, in] = {tuple(w.shape)}")
    if block_size < WARP or block_size > WARP * MAX_WARPS or block_size & (block_size - 1):
        raise ValueError(f"linear: block_size must be a power of two from {WARP} to {WARP * MAX_WARPS}, "
                         f"got {block_size}")
    warps = block_size // WARP
    if warps_per_row is not None and (warps_per_row < 1 or warps_per_row > warps
                                      or warps_per_row & (warps_per_row - 1)):
        raise ValueError(f"linear: warps_per_row must be a power of two <= block_size // {WARP} = {warps}, "
                         f"got {warps_per_row}")


def linear(x: torch.Tensor, w, *, path: str | None = None, block_size: int | None = None,
           warps_per_row: int | None = None) -> torch.Tensor:
    """y = x @ w.T for x [T, in] and w [out, in] -> [T, out] in x's dtype.

    w a Q4Weight: T == 1 runs the 4-bit GEMV (block_size default 128, warps_per_row as day 11's);
    T > 1 dequantizes w to x's dtype for this call and runs the previous linear (a copy per
    call). Anything else goes to the previous day's linear with the options given. Nothing is
    read back to the host: capture-safe.
    """
    if not isinstance(w, Q4Weight):
        options = {k: v for k, v in (("path", path), ("block_size", block_size), ("warps_per_row", warps_per_row))
                   if v is not None}
        return previous_linear(TRACK)(x, w, **options)
    block_size = 128 if block_size is None else block_size
    check_args(x, w, block_size, warps_per_row)
    gpu.require_device(x, w.qs, w.d)
    T, K = x.shape
    N = w.shape[0]
    if T != 1:   # given: a prefill, verify or batch dequantizes for this call
        return previous_linear(TRACK)(x, dequantize(w, x.dtype))
    # TODO(day 47): out = torch.empty(T, N) in x's dtype (return it when N is 0); qw = w.qs.view(torch.int32) (four
    #   words per block); split = warps_per_row or warps_per_row_for(N, K, warps); the 16-byte kernel gemv_wide only
    #   when x and w.qs are contiguous and both data pointers are multiples of 16, else gemv_any; grid
    #   cdiv(N, warps // split), block block_size, args (x, qw, w.d, w.m, w.group_size, out, K, split).
    #   No .item() or .cpu(): the decode step is captured.
    raise NotImplementedError("Day 47: linear is not written yet -- edit days/day_47/w4a16.py "
                              "(lesson: notes/day_47_w4a16.md)")


# ---- day 54's fused names for 4-bit weights, unfused around this day's linear (the dispatch is given) ----
@functools.lru_cache(maxsize=None)
def previous(name: str):
    """The norm_linear / linear_add anything but a Q4Weight goes to (day 43's, 42's or the
    reference), resolved once per process."""
    from shared.course import registry
    return registry.resolve_before(name, TRACK, DAY)


@functools.lru_cache(maxsize=None)
def component(name: str):
    """The track's own rmsnorm, rope, silu_mul (what the unfused forward would call)."""
    from shared.course import registry
    return registry.resolve(name, TRACK)


def norm_linear(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, w, *, gated: bool = False,
                rope=None) -> torch.Tensor:
    """Day 54's norm_linear for a Q4Weight, unfused (as day 43 does for W8A8): the track's
    rmsnorm, this day's linear, then RoPE on the first heads (rope=(positions, inv_freq, heads))
    or silu_mul(gate, up) (gated). Any other w goes to the previous norm_linear."""
    if not isinstance(w, Q4Weight):
        return previous("norm_linear")(h, norm_weight, eps, w, gated=gated, rope=rope)
    # TODO(day 47): as day 43's norm_linear for W8A8: y = linear(component("rmsnorm")(h, norm_weight, eps), w);
    #   rope=(positions, inv_freq, heads): view y's first heads * hd columns as [T, heads, hd] (hd = 2 * len(inv_freq))
    #   and rotate them in place with component("rope")(qk, qk[:, :0], positions, inv_freq); gated: w = [gate; up],
    #   return component("silu_mul")(y[:, :F], y[:, F:]) with F = w.shape[0] // 2; else return y.
    raise NotImplementedError("Day 47: norm_linear for a Q4Weight is not written yet -- edit days/day_47/w4a16.py "
                              "(lesson: notes/day_47_w4a16.md)")


def linear_add(x: torch.Tensor, w, h: torch.Tensor) -> None:
    """h += x @ w.T in place for a Q4Weight: this day's linear (rounded to h's dtype), then the add
    (HF's order). Any other w goes to the previous linear_add."""
    if not isinstance(w, Q4Weight):
        return previous("linear_add")(x, w, h)
    # TODO(day 47): h += this day's linear(x, w) (rounded to h's dtype first, then the add: HF's order).
    raise NotImplementedError("Day 47: linear_add for a Q4Weight is not written yet -- edit days/day_47/w4a16.py "
                              "(lesson: notes/day_47_w4a16.md)")
