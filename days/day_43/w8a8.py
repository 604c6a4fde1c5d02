"""Day 43 -- W8A8: int8 activations per token, int8 x int8 -> int32 with dp4a.

Day 41 turned int8 weights into floats and multiplied in fp32. Here the activations become int8
too, one scale per token (day 40's symmetric rule, row by row), and the products are integer:
PTX `dp4a` multiplies four signed bytes of x by four of w and adds them to an int32 in one
instruction (shared/runtime/dp4a.py). Exact until the scales, which come once at the end:

    y[t, n] = float32(I[t, n]) * scale_w[n] * scale_x[t]          I = sum_k q_x[t, k] q_w[n, k]  (int32)
    (groups: sum_g float32(I_g[t, n]) * scale_w[n, g], then * scale_x[t])

Three kernels: `quantize_rows_kernel` (one block per token: max |x|, the scale, the int8 values
packed four to a word), `rows_kernel` (a warp team per weight row, 16 bytes of w per lane per step,
used by 1 token -- the GEMV -- or by 8: w read once for 8 tokens) and `tiled_kernel` (16 x 16
tiles of words staged in shared memory, for many tokens). A weight that is not a W8A8 QuantWeight
goes to the previous day's linear, unchanged.

Lesson: notes/day_43_w8a8.md        Check: pytest checkers/day_43
"""
import functools

import numpy as np
import torch

from shared.quant import QuantWeight
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, int32

from shared.runtime.dp4a import dp4a, load4_words_wide, shfl_down_i32
from shared.runtime.vector_loads import shfl_down

DAY = 43
WARP = 32
MAX_BLOCK = 1024     # the quantizer's shared array: the largest block
MAX_WARPS = 32       # one partial sum per warp of the largest block
STEP = 4             # words (16 bytes) per lane per step of the rows kernel; a group is a multiple of 16 bytes
TOKENS = 8           # path "skinny": tokens per block of the rows kernel, one int32 sum each per lane
BUSY_WARPS = 4096    # split short matrices' rows over more warps until about this many run (day 11)
TILE = 16            # path "tiled": a TILE x TILE block computes TILE tokens x TILE rows
TILE_PAD = TILE + 1
SKINNY_MAX_T = 16    # "auto": T == 1 the GEMV, 2 .. this the skinny rows kernel, more the tiled kernel
PATHS = ("auto", "gemv", "skinny", "tiled")
TRACK = __name__.split(".")[0]      # "days" or "solutions"


# ---- given: where other weights go, and the track's parts for the fused names ---------------------
@functools.lru_cache(maxsize=None)
def previous(name: str):
    """The `name` this day takes over from for what is not W8A8 (plain tensors, W8A16 QuantWeights):
    the highest finished day before it that provides `name` (`registry.resolve_before`), else the
    reference; resolved once per process."""
    from shared.course import registry
    return registry.resolve_before(name, TRACK, DAY)


@functools.lru_cache(maxsize=None)
def component(name: str):
    """The track's own rmsnorm, rope, silu_mul (what the unfused forward would call)."""
    from shared.course import registry
    return registry.resolve(name, TRACK)


# Given: round half to even in float32, as torch.round (day 40).
if gpu.SIM:
    @cuda.jit(device=True)
    def rint(x):
        return np.float32(np.rint(x))
else:
    @cuda.jit(device=True)
    def rint(x):
        return cuda.libdevice.rintf(x)          # one instruction: cvt.rni.f32.f32


# ---- packing and the activation quantizer ----------------------------------------------------------
@cuda.jit(device=True)
def pack4(b0, b1, b2, b3):
    """Four int8 values (ints in -128 .. 127) in one 32-bit word, b0 in the lowest byte: dp4a's operand.
    A negative int is all ones above its byte: mask each to its 8 bits before shifting it in place."""
    # TODO(day 43): int32 of b0, b1, b2, b3 shifted to bits 0-7, 8-15, 16-23, 24-31 and OR-ed together; every byte
    #   but the top one masked with & 0xFF first (the top byte's sign is the word's sign).
    return int32(0)


@cuda.jit(device=True)
def to_int8(v, s):
    """v / s rounded half to even and clamped to the symmetric grid [-127, 127] (day 40), as an int."""
    # TODO(day 43): rint(float32(v) / s) (a true division, rounded half to even), clamped to [-127, 127] in float32,
    #   then int32(...).
    return int32(0)


@cuda.jit
def quantize_rows_kernel(x, clip, words, scale):
    """Block t quantizes token t: s = clip * max|x[t, :]| / 127 (1 for a zero row) -> scale[t, 0];
    words[t, j] = the int8 values of columns 4j .. 4j + 3 packed (0 past the row's end)."""
    # TODO(day 43): one block per token t = cuda.blockIdx.x, K = x.shape[1].
    # 1. Each thread folds |float32(x[t, c])| over its strided columns into a running max (from 0); a shared
    #    array of MAX_BLOCK float32; day 03's tree for the max, a barrier after every step.
    # 2. s = float32(clip) * max / float32(127) (in that order), 1 if it comes out 0; thread 0 writes scale[t, 0].
    # 3. For each word j of the row (strided over the block; words.shape[1] of them): the four columns
    #    k = 4j .. 4j + 3 through to_int8(x[t, k], s) (0 for a column past K), packed with pack4 into words[t, j].
    pass


# ---- reading the weights: words of four bytes --------------------------------------------------------
@cuda.jit(device=True)
def word_bytes(q, n, j, K):
    """Bytes 4j .. 4j + 3 of int8 row q[n] as one word (0 past K): four byte loads, any K, any alignment."""
    # TODO(day 43): the bytes q[n, 4j] .. q[n, 4j + 3] as int32 (0 for a column past K), packed with pack4.
    return int32(0)


@cuda.jit(device=True)
def word_wide(q32, n, j, K):
    """Word j of row n of q viewed as int32 [N, K / 4] (K % 16 == 0): one 4-byte load."""
    return q32[n, j]


@cuda.jit(device=True)
def words_bytes(q, n, j, K):
    return word_bytes(q, n, j, K), word_bytes(q, n, j + 1, K), word_bytes(q, n, j + 2, K), word_bytes(q, n, j + 3, K)


@cuda.jit(device=True)
def words_wide(q32, n, j, K):
    return load4_words_wide(q32, n, j)


# ---- the products -------------------------------------------------------------------------------------
def make_rows_kernel(load4, tokens):
    """The GEMV (tokens = 1) and the skinny kernel (tokens = TOKENS), reading 16 bytes of w per lane and
    step with `load4`. Numba compiles each on its own."""

    @cuda.jit
    def rows_kernel(xw, sx, q, sw, group_size, grouped, raw, K, warps_per_row, out, out_i):
        """out[t, n] for the `tokens` tokens of grid row blockIdx.y and the weight row n of this warp
        team: lanes take 4 consecutive words (16 bytes) of w per step -- read once, used by every token
        -- and dp4a them with each token's 4 words of x. Per row (channel / tensor) one int32 sum runs
        over the whole row and lanes add up with int32 shuffles; per group each step's int32 sum times
        its group's scale goes into an fp32 sum. raw: out_i[t, n] = the int32 sum, no scales."""
        # TODO(day 43): day 41's skinny layout (lane, warp, n, part, me, threads; t0 = blockIdx.y * tokens), with
        #   shared (MAX_WARPS, tokens) partials of int32 AND float32, local arrays acc_i (int32) and acc_f (float32) of
        #   `tokens` zeroed, sr = n if sw.shape[0] > 1 else 0 (define it before any branch).
        # - if n < N: for j = me * STEP, ... < xw.shape[1], step threads * STEP: w0..w3 = load4(q, n, j, K) ONCE; if
        #   grouped, s = sw[sr, (4 * j) // group_size]; for each token slot with t0 + t < T: x0..x3 =
        #   load4_words_wide(xw, t0 + t, j), then grouped: p = the dp4a chain from 0, acc_f[t] += float32(p) * s;
        #   else: acc_i[t] = the dp4a chain starting from acc_i[t] (one int32 sum over the whole row).
        # - per valid slot (every thread): grouped -> shfl_down over the warp on acc_f; else shfl_down_i32 on acc_i
        #   (keep int32: vi = int32(vi + shfl_down_i32(vi, offset))); lane 0 stores part_f / part_i[warp, t].
        # - cuda.syncthreads(); lane 0 of the row's first warp (n < N) adds the row's warps_per_row partials and writes:
        #   raw -> out_i[t0 + t, n] = the int32 total; grouped -> out = total_f * sx[t0 + t, 0];
        #   else out = float32(total_i) * sw[sr, 0] * sx[t0 + t, 0] (in that order).
        pass

    return rows_kernel


def make_tiled_kernel(load_word):
    @cuda.jit
    def tiled_kernel(xw, sx, q, sw, group_size, grouped, raw, K, out, out_i):
        """Day 11's tiled GEMM on words: a TILE x TILE block stages TILE tokens' and TILE weight rows'
        next TILE words (64 bytes) in shared memory, then thread (tx, ty) dp4a's token ty's words with
        row tx's, 16 bytes at a time (a group holds whole 16-byte chunks), in int32."""
        # TODO(day 43): day 11's tiled GEMM on int32 words: xs, ws shared (TILE, TILE_PAD) int32; t = blockIdx.y * TILE
        #   + ty (token), n = blockIdx.x * TILE + tx (output row), w_row = blockIdx.x * TILE + ty (the row it stages).
        #   For k0 = 0, TILE, ... < KW (= xw.shape[1]): stage xs[ty, tx] = xw[t, k0 + tx] and ws[ty, tx] =
        #   load_word(q, w_row, k0 + tx, K) (0 outside), barrier, then for c = 0, 4, 8, 12: the dp4a chain of
        #   xs[ty, c..c+3] with ws[tx, c..c+3] -- grouped: from 0, times sw[sr, 4 * (k0 + c) // group_size] into acc_f
        #   (only while n < N and 4 * (k0 + c) < K); else into the one int32 acc_i -- barrier.
        #   The epilogue as in rows_kernel, for t < T and n < N.
        pass

    return tiled_kernel


gemv_wide, gemv_bytes = make_rows_kernel(words_wide, 1), make_rows_kernel(words_bytes, 1)
skinny_wide, skinny_bytes = make_rows_kernel(words_wide, TOKENS), make_rows_kernel(words_bytes, TOKENS)
tiled_wide, tiled_bytes = make_tiled_kernel(word_wide), make_tiled_kernel(word_bytes)


# ---- host side ------------------------------------------------------------------------------------------
def padded_words(K: int) -> int:
    """Words per packed row: K bytes rounded up to whole 16-byte steps."""
    return gpu.cdiv(K, 16) * STEP


def warps_per_row_for(N: int, K: int, warps: int) -> int:
    """Day 41's split for short matrices: double the warps per row while fewer than about BUSY_WARPS run
    and each lane keeps two 16-byte steps."""
    split = 1
    while split < warps and N * split < BUSY_WARPS and K >= 2 * (2 * split) * WARP * 16:
        split *= 2
    return split


def check_options(path, block_size, warps_per_row) -> None:
    if path not in PATHS:
        raise ValueError(f"linear: path must be one of {', '.join(PATHS)}, got {path!r}")
    if block_size < WARP or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"linear: block_size must be a power of two from {WARP} to {MAX_BLOCK}, got {block_size}")
    warps = block_size // WARP
    if warps_per_row is not None and (warps_per_row < 1 or warps_per_row > warps
                                      or warps_per_row & (warps_per_row - 1)):
        raise ValueError(f"linear: warps_per_row must be a power of two <= block_size // {WARP} = {warps}, "
                         f"got {warps_per_row}")


def quantize_packed(x: torch.Tensor, clip: float = 1.0, block_size: int = 128):
    """x [T, K] -> (words int32 [T, padded_words(K)], scale float32 [T, 1]): one block per token."""
    T, K = x.shape
    words = torch.empty(T, padded_words(K), dtype=torch.int32, device=x.device)
    scale = torch.empty(T, 1, dtype=torch.float32, device=x.device)
    if T:
        gpu.launch(quantize_rows_kernel, T, block_size, x, float(clip), words, scale)
    return words, scale


def quantize_activations(x: torch.Tensor, *, clip: float = 1.0, block_size: int = 128):
    """x [T, in] fp16/fp32 -> (q int8 [T, in], scale float32 [T, 1]): one scale per token,
    scale = clip * max|x[t]| / 127 (1 for a zero row), q = clamp(rint(x / scale), -127, 127).
    clip in (0, 1] saturates values past clip * max|x[t]|. One-line ValueError for bad input."""
    # TODO(day 43): one-line ValueErrors: x not float16 / float32 [T, in], no columns, clip outside (0, 1];
    #   check_options("auto", block_size, None); gpu.require_device(x); words, scale = quantize_packed(x, clip,
    #   block_size); return the words viewed as int8 [T, 4 * words] cut to [:, :in] (little-endian: byte i of word j
    #   is column 4j + i), and scale.
    raise NotImplementedError("Day 43: quantize_activations is not written yet -- edit days/day_43/w8a8.py "
                              "(lesson: notes/day_43_w8a8.md)")


def product(xw, sx, q, sw, group_size, grouped, raw, out, out_i, path, block_size, warps_per_row):
    """Launch the path's kernel: out (or out_i, raw) = the int8 product of packed x words and q's rows."""
    T, (N, K) = xw.shape[0], q.shape
    if T == 0 or N == 0:
        return
    wide = q.is_contiguous() and K % 16 == 0 and q.data_ptr() % 16 == 0
    qk = q.view(torch.int32) if wide else q
    if path == "auto":
        path = "gemv" if T == 1 else "skinny" if T <= SKINNY_MAX_T else "tiled"
    if path == "tiled":
        gpu.launch(tiled_wide if wide else tiled_bytes, (gpu.cdiv(N, TILE), gpu.cdiv(T, TILE)), (TILE, TILE),
                   xw, sx, qk, sw, group_size, grouped, raw, K, out, out_i)
        return
    if path == "gemv" and T != 1:
        raise ValueError(f"linear: the gemv path computes one token, got T={T}; use path='skinny'")
    warps = block_size // WARP
    split = min(warps_per_row or warps_per_row_for(N, K, warps), warps)
    rows = gpu.cdiv(N, warps // split)
    if path == "gemv":
        gpu.launch(gemv_wide if wide else gemv_bytes, rows, block_size,
                   xw, sx, qk, sw, group_size, grouped, raw, K, split, out, out_i)
    else:
        gpu.launch(skinny_wide if wide else skinny_bytes, (rows, gpu.cdiv(T, TOKENS)), block_size,
                   xw, sx, qk, sw, group_size, grouped, raw, K, split, out, out_i)


def linear(x: torch.Tensor, w, *, path: str | None = None, block_size: int | None = None,
           warps_per_row: int | None = None) -> torch.Tensor:
    """y = x @ w.T for x [T, in] and w [out, in] -> [T, out] in x's dtype.

    w a QuantWeight with int8 activations (W8A8: symmetric, per tensor / channel / group of a
    multiple of 16 columns): x is quantized per token (`quantize_activations`), the int8 products
    summed in int32 by dp4a, then y = I * scale_w * scale_x in fp32, rounded once to x's dtype.
    path "auto" takes the GEMV at T == 1, the skinny rows kernel (w read once for TOKENS tokens) for
    2 <= T <= SKINNY_MAX_T and the tiled kernel above; "gemv" (T == 1), "skinny", "tiled" force one.
    block_size (default 128) and warps_per_row as day 41's. Any other w (a plain tensor, a W8A16
    QuantWeight) goes to the previous day's linear with the options given. Capture-safe.
    """
    if not (isinstance(w, QuantWeight) and w.int8_activations):
        options = {k: v for k, v in (("path", path), ("block_size", block_size), ("warps_per_row", warps_per_row))
                   if v is not None}
        return previous("linear")(x, w, **options)
    # TODO(day 43): path "auto" and block_size 128 when None. One-line ValueErrors: x not float16 / float32 [T, in];
    #   x's in != w.q.shape[1]; a group granularity whose group_size is not a multiple of 16; check_options(path,
    #   block_size, warps_per_row) (given). gpu.require_device(x, w.q, w.scale). out = torch.empty(T, N) in x's dtype
    #   (returned as is when T or N is 0); xw, sx = quantize_packed(x, 1.0, block_size); then product(xw, sx, w.q,
    #   w.scale, w.group_size, grouped, False, out, a 1 x 1 int32 tensor (out_i: unused), path, block_size,
    #   warps_per_row) and return out.
    raise NotImplementedError("Day 43: linear for W8A8 weights is not written yet -- edit days/day_43/w8a8.py "
                              "(lesson: notes/day_43_w8a8.md)")

def int8_matmul(a: torch.Tensor, b: torch.Tensor, *, path: str | None = None, block_size: int | None = None,
                warps_per_row: int | None = None) -> torch.Tensor:
    """a int8 [M, K] @ b int8 [N, K].T -> int32 [M, N], exactly (torch._int_mm(a, b.T) on a GPU):
    the same kernels as `linear`, their int32 sums written out before any scale. Host-side packing of
    a (off the decode path). One-line ValueError for bad input."""
    # TODO(day 43): one-line ValueErrors (a, b not int8 2-D; K differs); path / block_size defaults and check_options;
    #   gpu.require_device(a, b). out_i = int32 [M, N]; a padded with zero bytes to 4 * padded_words(K) columns and
    #   viewed as int32 words; product(words, ones [max(M, 1), 1], b, ones[:1], K, False, True, a 1 x 1 float32
    #   tensor (out: unused), out_i, path, block_size, warps_per_row); return out_i.
    raise NotImplementedError("Day 43: int8_matmul is not written yet -- edit days/day_43/w8a8.py "
                              "(lesson: notes/day_43_w8a8.md)")

def norm_linear(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, w, *, gated: bool = False,
                rope=None) -> torch.Tensor:
    """Day 54's norm_linear for a W8A8 weight, unfused: rmsnorm(h) (the track's), then this day's
    linear (the normalized row is what gets quantized per token), then day 54's epilogues on the
    product in h's dtype: rope=(positions, inv_freq, heads) rotates its first heads, gated returns
    silu_mul(gate, up). Any other w goes to the previous norm_linear (day 42's int8 GEMV, ...)."""
    if not (isinstance(w, QuantWeight) and w.int8_activations):
        return previous("norm_linear")(h, norm_weight, eps, w, gated=gated, rope=rope)
    # TODO(day 43): y = linear(component("rmsnorm")(h, norm_weight, eps), w); rope: rotate the first `heads` heads of
    #   hd = 2 * inv_freq.shape[0] columns of y in place with component("rope") (k: an empty view), as
    #   shared/reference/fusion.py does; gated: component("silu_mul")(y[:, :F], y[:, F:]) with F = w.shape[0] // 2.
    raise NotImplementedError("Day 43: norm_linear for W8A8 weights is not written yet -- edit days/day_43/w8a8.py "
                              "(lesson: notes/day_43_w8a8.md)")

def linear_add(x: torch.Tensor, w, h: torch.Tensor) -> None:
    """h += x @ w.T in place for a W8A8 weight: this day's linear (rounded to h's dtype), then the add
    (HF's order). Any other w goes to the previous linear_add."""
    if not (isinstance(w, QuantWeight) and w.int8_activations):
        return previous("linear_add")(x, w, h)
    # TODO(day 43): h += linear(x, w) (the product rounded to h's dtype by linear, then the add).
    raise NotImplementedError("Day 43: linear_add for W8A8 weights is not written yet -- edit days/day_43/w8a8.py "
                              "(lesson: notes/day_43_w8a8.md)")
