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
SKINNY_MAX_BLOCK = 256   # skinny: the largest block that launches on the H100 (1024 failed: out of resources)
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
        xa = load_x(x, t, k)
        xb = load_x(x, t, k + 8)
        s = float32(0.0)
        for j in range(8):
            s += xa[j] * (qv[j] - zf)
        for j in range(8):
            s += xb[j] * (qv[8 + j] - zf)
        return s

    @cuda.jit
    def gemv_kernel(x, q, scale, zero, asym, group_size, out, K, warps_per_row):
        """out[0, n] = sum_k x[0, k] * (q[n, k] - zero[n, g]) * scale[n, g], g = k // group_size,
        with `warps_per_row` warps per row n. Lanes take 16 consecutive k per step (a warp reads 512
        contiguous bytes of q), two steps per iteration so two loads are in flight, then the last
        K % 16 one each. Lanes add up with shuffles, a row's warps through shared memory."""
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
            sr = n if scale.shape[0] > 1 else 0          # per tensor: one scale for every row
            body = K - K % VEC
            step = threads * VEC
            k = me * VEC
            while k + step < body:                       # two 16-byte loads of q in flight, then the math
                qa = load_q(q, n, k)
                qb = load_q(q, n, k + step)
                ga = k // group_size                     # group_size % 16 == 0: a load stays in one group
                gb = (k + step) // group_size
                za = float32(zero[sr, ga]) if asym else float32(0.0)
                zb = float32(zero[sr, gb]) if asym else float32(0.0)
                acc += dot16(x, 0, k, qa, za) * scale[sr, ga]
                acc += dot16(x, 0, k + step, qb, zb) * scale[sr, gb]
                k += 2 * step
            if k < body:                                 # an odd number of steps: the last one alone
                qv = load_q(q, n, k)
                g = k // group_size
                zf = float32(zero[sr, g]) if asym else float32(0.0)
                acc += dot16(x, 0, k, qv, zf) * scale[sr, g]
            for k in range(body + me, K, threads):       # the tail, one weight each
                g = k // group_size
                zf = float32(zero[sr, g]) if asym else float32(0.0)
                acc += float32(x[0, k]) * (float32(q[n, k]) - zf) * scale[sr, g]

        offset = WARP // 2                               # whole warps get here, rows past N too
        while offset > 0:
            acc += shfl_down(acc, offset)
            offset //= 2
        if lane == 0:
            partial[warp] = acc
        cuda.syncthreads()                               # every warp's sum is in place
        if lane == 0 and part == 0 and n < N:
            total = float32(0.0)
            for p in range(warps_per_row):
                total += partial[warp + p]
            out[0, n] = total                            # the one rounding to x's dtype

    @cuda.jit
    def skinny_kernel(x, q, scale, zero, asym, group_size, out, K, warps_per_row):
        """out[t, n] for the GROUP tokens t of group blockIdx.y, laid out like the GEMV: the 16
        weights a lane loads (and turns into floats) serve every token of the group, so q is read
        once per group of tokens."""
        partial = cuda.shared.array((MAX_WARPS, GROUP), float32)
        T, N = out.shape
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row
        me = part * WARP + lane
        threads = warps_per_row * WARP
        t0 = cuda.blockIdx.y * GROUP
        acc = cuda.local.array(GROUP, float32)
        for t in range(GROUP):
            acc[t] = float32(0.0)

        if n < N:
            sr = n if scale.shape[0] > 1 else 0
            body = K - K % VEC
            for k in range(me * VEC, body, threads * VEC):
                qv = load_q(q, n, k)                     # read once ...
                g = k // group_size
                zf = float32(zero[sr, g]) if asym else float32(0.0)
                s = scale[sr, g]
                for t in range(GROUP):                   # ... used by every token of the group
                    if t0 + t < T:
                        acc[t] += dot16(x, t0 + t, k, qv, zf) * s
            for k in range(body + me, K, threads):
                g = k // group_size
                zf = float32(zero[sr, g]) if asym else float32(0.0)
                wk = float32(q[n, k]) - zf
                s = scale[sr, g]
                for t in range(GROUP):
                    if t0 + t < T:
                        acc[t] += float32(x[t0 + t, k]) * wk * s

        for t in range(GROUP):
            if t0 + t < T:                               # the same for the whole block: every lane shuffles
                v = acc[t]
                offset = WARP // 2
                while offset > 0:
                    v += shfl_down(v, offset)
                    offset //= 2
                if lane == 0:
                    partial[warp, t] = v
        cuda.syncthreads()
        if lane == 0 and part == 0 and n < N:
            for t in range(GROUP):
                if t0 + t < T:
                    total = float32(0.0)
                    for p in range(warps_per_row):
                        total += partial[warp + p, t]
                    out[t0 + t, n] = total

    return gemv_kernel, skinny_kernel


gemv_wide, skinny_wide = make_kernels(load8_wide, load16_wide)   # x and q rows on 16-byte boundaries
gemv_any, skinny_any = make_kernels(load8, load16)               # any alignment, any strides


@cuda.jit
def gemm_kernel(x, q, scale, zero, asym, group_size, out, M, N, K):
    """Day 11's tiled GEMM with the weight tile dequantized as it is staged: ws holds
    (q - zero) * scale in fp32 -- the same float dequantize() computes -- so each int8 weight is
    read once per tile of TILE tokens and the math after staging is day 11's."""
    xs = cuda.shared.array((TILE, TILE_PAD), float32)
    ws = cuda.shared.array((TILE, TILE_PAD), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    w_row = cuda.blockIdx.x * TILE + ty
    sr = w_row if scale.shape[0] > 1 else 0

    acc = float32(0.0)
    for k0 in range(0, K, TILE):
        k = k0 + tx
        xs[ty, tx] = float32(x[row, k]) if row < M and k < K else float32(0.0)
        wv = float32(0.0)
        if w_row < N and k < K:
            g = k // group_size
            zf = float32(zero[sr, g]) if asym else float32(0.0)
            wv = (float32(q[w_row, k]) - zf) * scale[sr, g]
        ws[ty, tx] = wv
        cuda.syncthreads()
        for kk in range(TILE):
            acc += xs[ty, kk] * ws[tx, kk]
        cuda.syncthreads()
    if row < M and col < N:
        out[row, col] = acc


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
    if not isinstance(w, QuantWeight):
        options = {k: v for k, v in (("path", path), ("block_size", block_size), ("warps_per_row", warps_per_row))
                   if v is not None}
        return previous_linear(TRACK)(x, w, **options)
    path = "auto" if path is None else path
    block_size = 128 if block_size is None else block_size
    check_quant_args(x, w, path, block_size, warps_per_row)
    q, scale = w.q, w.scale
    gpu.require_device(x, q, scale)
    asym = w.zero is not None
    zero = w.zero if asym else q          # symmetric: never read; q has zero's type, so one kernel serves both
    T, K = x.shape
    N = q.shape[0]
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0 or N == 0:
        return out
    if path == "auto":
        path = "gemv" if T == 1 else "skinny" if T <= AUTO_SKINNY_MAX_T else "gemm"
    if path == "gemm":
        gpu.launch(gemm_kernel, (gpu.cdiv(N, TILE), gpu.cdiv(T, TILE)), (TILE, TILE),
                   x, q, scale, zero, asym, w.group_size, out, T, N, K)
        return out
    if path == "skinny":                  # GROUP fp32 sums per lane: more than 256 threads run out of registers
        block_size = min(block_size, SKINNY_MAX_BLOCK)
    warps = block_size // WARP
    split = min(warps_per_row or warps_per_row_for(N, K, warps), warps)
    # 16-byte loads need every row of q, and of x, to start on a 16-byte boundary
    wide = (x.is_contiguous() and q.is_contiguous() and K % VEC == 0
            and x.data_ptr() % 16 == 0 and q.data_ptr() % 16 == 0)
    rows = gpu.cdiv(N, warps // split)
    args = (x, q, scale, zero, asym, w.group_size, out, K, split)
    if path == "gemv":
        gpu.launch(gemv_wide if wide else gemv_any, rows, block_size, *args)
    else:
        gpu.launch(skinny_wide if wide else skinny_any, (rows, gpu.cdiv(T, GROUP)), block_size, *args)
    return out
