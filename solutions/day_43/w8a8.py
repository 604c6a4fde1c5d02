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
    return int32((b0 & 0xFF) | ((b1 & 0xFF) << 8) | ((b2 & 0xFF) << 16) | (b3 << 24))


@cuda.jit(device=True)
def to_int8(v, s):
    """v / s rounded half to even and clamped to the symmetric grid [-127, 127] (day 40), as an int."""
    r = rint(float32(v) / s)
    return int32(min(max(r, float32(-127)), float32(127)))


@cuda.jit
def quantize_rows_kernel(x, clip, words, scale):
    """Block t quantizes token t: s = clip * max|x[t, :]| / 127 (1 for a zero row) -> scale[t, 0];
    words[t, j] = the int8 values of columns 4j .. 4j + 3 packed (0 past the row's end)."""
    smax = cuda.shared.array(MAX_BLOCK, float32)
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    K = x.shape[1]
    m = float32(0.0)
    for c in range(tid, K, nthreads):
        m = max(m, abs(float32(x[t, c])))
    smax[tid] = m
    cuda.syncthreads()
    half = nthreads // 2
    while half > 0:                               # day 03's tree, for the max
        if tid < half:
            smax[tid] = max(smax[tid], smax[tid + half])
        cuda.syncthreads()
        half //= 2
    s = float32(clip) * smax[0] / float32(127)
    if s == float32(0):                           # a zero row: every q is 0 whatever the scale; 1 divides safely
        s = float32(1)
    if tid == 0:
        scale[t, 0] = s
    for j in range(tid, words.shape[1], nthreads):
        k = 4 * j
        b0 = to_int8(x[t, k], s) if k < K else 0
        b1 = to_int8(x[t, k + 1], s) if k + 1 < K else 0
        b2 = to_int8(x[t, k + 2], s) if k + 2 < K else 0
        b3 = to_int8(x[t, k + 3], s) if k + 3 < K else 0
        words[t, j] = pack4(b0, b1, b2, b3)


# ---- reading the weights: words of four bytes --------------------------------------------------------
@cuda.jit(device=True)
def word_bytes(q, n, j, K):
    """Bytes 4j .. 4j + 3 of int8 row q[n] as one word (0 past K): four byte loads, any K, any alignment."""
    k = 4 * j
    b0 = int32(q[n, k]) if k < K else 0
    b1 = int32(q[n, k + 1]) if k + 1 < K else 0
    b2 = int32(q[n, k + 2]) if k + 2 < K else 0
    b3 = int32(q[n, k + 3]) if k + 3 < K else 0
    return pack4(b0, b1, b2, b3)


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
        part_i = cuda.shared.array((MAX_WARPS, tokens), int32)
        part_f = cuda.shared.array((MAX_WARPS, tokens), float32)
        T, N = xw.shape[0], q.shape[0]
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row
        me = part * WARP + lane
        threads = warps_per_row * WARP
        t0 = cuda.blockIdx.y * tokens
        acc_i = cuda.local.array(tokens, int32)
        acc_f = cuda.local.array(tokens, float32)
        for t in range(tokens):
            acc_i[t] = 0
            acc_f[t] = float32(0.0)
        sr = n if sw.shape[0] > 1 else 0                 # per tensor: one scale for every row

        if n < N:
            for j in range(me * STEP, xw.shape[1], threads * STEP):
                w0, w1, w2, w3 = load4(q, n, j, K)       # read once ...
                s = sw[sr, (4 * j) // group_size] if grouped else float32(0.0)
                for t in range(tokens):                  # ... used by every token of the block
                    if t0 + t < T:
                        x0, x1, x2, x3 = load4_words_wide(xw, t0 + t, j)
                        if grouped:
                            p = dp4a(x3, w3, dp4a(x2, w2, dp4a(x1, w1, dp4a(x0, w0, 0))))
                            acc_f[t] += float32(p) * s
                        else:
                            acc_i[t] = dp4a(x3, w3, dp4a(x2, w2, dp4a(x1, w1, dp4a(x0, w0, acc_i[t]))))

        for t in range(tokens):
            if t0 + t < T:                               # the same for the whole block: every lane shuffles
                offset = WARP // 2
                if grouped:
                    v = acc_f[t]
                    while offset > 0:
                        v += shfl_down(v, offset)
                        offset //= 2
                    if lane == 0:
                        part_f[warp, t] = v
                else:
                    vi = acc_i[t]
                    while offset > 0:
                        vi = int32(vi + shfl_down_i32(vi, offset))
                        offset //= 2
                    if lane == 0:
                        part_i[warp, t] = vi
        cuda.syncthreads()                               # every warp's sums are in place
        if lane == 0 and part == 0 and n < N:
            for t in range(tokens):
                if t0 + t < T:
                    total_i = int32(0)
                    total_f = float32(0.0)
                    for p in range(warps_per_row):
                        if grouped:
                            total_f += part_f[warp + p, t]
                        else:
                            total_i = int32(total_i + part_i[warp + p, t])
                    if raw:
                        out_i[t0 + t, n] = total_i
                    elif grouped:
                        out[t0 + t, n] = total_f * sx[t0 + t, 0]
                    else:
                        out[t0 + t, n] = float32(total_i) * sw[sr, 0] * sx[t0 + t, 0]

    return rows_kernel


def make_tiled_kernel(load_word):
    @cuda.jit
    def tiled_kernel(xw, sx, q, sw, group_size, grouped, raw, K, out, out_i):
        """Day 11's tiled GEMM on words: a TILE x TILE block stages TILE tokens' and TILE weight rows'
        next TILE words (64 bytes) in shared memory, then thread (tx, ty) dp4a's token ty's words with
        row tx's, 16 bytes at a time (a group holds whole 16-byte chunks), in int32."""
        xs = cuda.shared.array((TILE, TILE_PAD), int32)
        ws = cuda.shared.array((TILE, TILE_PAD), int32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        T, N, KW = xw.shape[0], q.shape[0], xw.shape[1]
        t = cuda.blockIdx.y * TILE + ty                  # the token this thread stages and computes
        n = cuda.blockIdx.x * TILE + tx                  # the weight row of its output
        w_row = cuda.blockIdx.x * TILE + ty              # the weight row it stages
        sr = n if sw.shape[0] > 1 else 0
        acc_i = int32(0)
        acc_f = float32(0.0)
        for k0 in range(0, KW, TILE):
            j = k0 + tx
            xs[ty, tx] = xw[t, j] if t < T and j < KW else 0
            ws[ty, tx] = load_word(q, w_row, j, K) if w_row < N and j < KW else 0
            cuda.syncthreads()
            for c in range(0, TILE, STEP):
                if grouped:
                    p = dp4a(xs[ty, c + 3], ws[tx, c + 3], dp4a(xs[ty, c + 2], ws[tx, c + 2],
                             dp4a(xs[ty, c + 1], ws[tx, c + 1], dp4a(xs[ty, c], ws[tx, c], 0))))
                    if n < N and 4 * (k0 + c) < K:
                        acc_f += float32(p) * sw[sr, (4 * (k0 + c)) // group_size]
                else:
                    acc_i = dp4a(xs[ty, c + 3], ws[tx, c + 3], dp4a(xs[ty, c + 2], ws[tx, c + 2],
                                 dp4a(xs[ty, c + 1], ws[tx, c + 1], dp4a(xs[ty, c], ws[tx, c], acc_i))))
            cuda.syncthreads()
        if t < T and n < N:
            if raw:
                out_i[t, n] = acc_i
            elif grouped:
                out[t, n] = acc_f * sx[t, 0]
            else:
                out[t, n] = float32(acc_i) * sw[sr, 0] * sx[t, 0]

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
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"quantize_activations: x must be float16 or float32 [T, in], got "
                         f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__} "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
    if x.shape[1] == 0:
        raise ValueError("quantize_activations: x has no columns")
    if not 0.0 < clip <= 1.0:
        raise ValueError(f"quantize_activations: clip must be in (0, 1], got {clip}")
    check_options("auto", block_size, None)
    gpu.require_device(x)
    words, scale = quantize_packed(x, clip, block_size)
    return words.view(torch.int8)[:, :x.shape[1]], scale     # the GPU is little-endian: byte i of word j is column 4j + i


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
    path = "auto" if path is None else path
    block_size = 128 if block_size is None else block_size
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in (torch.float16, torch.float32):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"linear: x must be float16 or float32 [T, in], got {got}")
    if x.shape[1] != w.q.shape[1]:
        raise ValueError(f"linear: x is {tuple(x.shape)} but the QuantWeight is [out, in] = {tuple(w.q.shape)}: "
                         "the `in` sizes differ")
    if w.granularity == "group" and w.group_size % 16:
        raise ValueError(f"linear: group_size {w.group_size} is not a multiple of 16 (a lane's 16 bytes must stay "
                         "in one group): quantize with group_size 32, 64 or 128")
    check_options(path, block_size, warps_per_row)
    gpu.require_device(x, w.q, w.scale)
    T, N = x.shape[0], w.q.shape[0]
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0 or N == 0:
        return out
    xw, sx = quantize_packed(x, 1.0, block_size)
    unused = torch.empty(1, 1, dtype=torch.int32, device=x.device)          # out_i: only raw products write it
    product(xw, sx, w.q, w.scale, w.group_size, w.granularity == "group", False, out, unused, path, block_size,
            warps_per_row)
    return out


def int8_matmul(a: torch.Tensor, b: torch.Tensor, *, path: str | None = None, block_size: int | None = None,
                warps_per_row: int | None = None) -> torch.Tensor:
    """a int8 [M, K] @ b int8 [N, K].T -> int32 [M, N], exactly (torch._int_mm(a, b.T) on a GPU):
    the same kernels as `linear`, their int32 sums written out before any scale. Host-side packing of
    a (off the decode path). One-line ValueError for bad input."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != torch.int8:
            raise ValueError(f"int8_matmul: {name} must be int8 [rows, K], got "
                             f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"int8_matmul: a is {tuple(a.shape)}, b is {tuple(b.shape)}: K differs")
    path = "auto" if path is None else path
    block_size = 128 if block_size is None else block_size
    check_options(path, block_size, warps_per_row)
    gpu.require_device(a, b)
    (M, K), N = a.shape, b.shape[0]
    out_i = torch.empty(M, N, dtype=torch.int32, device=a.device)
    padded = torch.zeros(M, 4 * padded_words(K), dtype=torch.int8, device=a.device)
    padded[:, :K] = a
    ones = torch.ones(max(M, 1), 1, dtype=torch.float32, device=a.device)
    dummy = torch.empty(1, 1, dtype=torch.float32, device=a.device)
    product(padded.view(torch.int32), ones, b, ones[:1], K, False, True, dummy, out_i, path, block_size,
            warps_per_row)
    return out_i


def norm_linear(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, w, *, gated: bool = False,
                rope=None) -> torch.Tensor:
    """Day 54's norm_linear for a W8A8 weight, unfused: rmsnorm(h) (the track's), then this day's
    linear (the normalized row is what gets quantized per token), then day 54's epilogues on the
    product in h's dtype: rope=(positions, inv_freq, heads) rotates its first heads, gated returns
    silu_mul(gate, up). Any other w goes to the previous norm_linear (day 42's int8 GEMV, ...)."""
    if not (isinstance(w, QuantWeight) and w.int8_activations):
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
    """h += x @ w.T in place for a W8A8 weight: this day's linear (rounded to h's dtype), then the add
    (HF's order). Any other w goes to the previous linear_add."""
    if not (isinstance(w, QuantWeight) and w.int8_activations):
        return previous("linear_add")(x, w, h)
    h += linear(x, w)
