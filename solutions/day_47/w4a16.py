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
        s = float32(0.0)
        sx = float32(0.0)
        for h in range(2):                       # low nibbles: weights k .. k+15; high: k+16 .. k+31
            xa = load_x(x, 0, k + 16 * h)
            xb = load_x(x, 0, k + 16 * h + 8)
            for j in range(4):                   # word j holds bytes 4j .. 4j+3
                for jj in range(4):
                    nib = (words[j] >> (8 * jj + 4 * h)) & 0xF
                    i = 4 * j + jj
                    xv = xa[i] if i < 8 else xb[i - 8]
                    s += xv * float32(nib)
                    sx += xv
        return s, sx

    @cuda.jit
    def gemv_kernel(x, qw, d, m, group_size, out, K, warps_per_row):
        """out[0, n] = sum over blocks of d * (x . nibbles) + m * sum(x), `warps_per_row` warps per
        row n; each lane takes whole blocks, a warp reads 512 contiguous bytes of nibbles."""
        partial = cuda.shared.array(MAX_WARPS, float32)
        N = out.shape[1]
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row
        me = part * WARP + lane
        threads = warps_per_row * WARP

        acc = float32(0.0)
        if n < N:
            for b in range(me, K // BLOCK, threads):
                k = b * BLOCK
                s, sx = block_dot(x, k, load_w(qw, n, WORDS * b))
                g = k // group_size
                acc += float32(d[n, g]) * s + float32(m[n, g]) * sx

        offset = WARP // 2                       # whole warps get here, rows past N too
        while offset > 0:
            acc += shfl_down(acc, offset)
            offset //= 2
        if lane == 0:
            partial[warp] = acc
        cuda.syncthreads()
        if lane == 0 and part == 0 and n < N:
            total = float32(0.0)
            for p in range(warps_per_row):
                total += partial[warp + p]
            out[0, n] = total                    # the one rounding to x's dtype

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
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if N == 0:
        return out
    qw = w.qs.view(torch.int32)                  # 4 words per block (in // 2 bytes = in // 8 words)
    warps = block_size // WARP
    split = min(warps_per_row or warps_per_row_for(N, K, warps), warps)
    wide = (x.is_contiguous() and w.qs.is_contiguous() and x.data_ptr() % 16 == 0 and w.qs.data_ptr() % 16 == 0)
    gpu.launch(gemv_wide if wide else gemv_any, gpu.cdiv(N, warps // split), block_size,
               x, qw, w.d, w.m, w.group_size, out, K, split)
    return out


# ---- given: day 54's fused names for 4-bit weights, unfused around this day's linear ---------------
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
    y = linear(component("rmsnorm")(h, norm_weight, eps), w)
    if rope is not None:
        positions, inv_freq, heads = rope
        hd = 2 * inv_freq.shape[0]
        qk = y[:, :heads * hd].view(y.shape[0], heads, hd)
        component("rope")(qk, qk[:, :0], positions, inv_freq)
    if not gated:
        return y
    F = w.shape[0] // 2
    return component("silu_mul")(y[:, :F], y[:, F:])


def linear_add(x: torch.Tensor, w, h: torch.Tensor) -> None:
    """h += x @ w.T in place for a Q4Weight: this day's linear (rounded to h's dtype), then the add
    (HF's order). Any other w goes to the previous linear_add."""
    if not isinstance(w, Q4Weight):
        return previous("linear_add")(x, w, h)
    h += linear(x, w)
