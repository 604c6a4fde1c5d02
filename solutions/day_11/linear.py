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
        partial = cuda.shared.array(MAX_WARPS, float32)   # one sum per warp
        N = out.shape[1]
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row           # which of the row's warps this is
        me = part * WARP + lane               # this thread's rank among the row's threads
        threads = warps_per_row * WARP

        acc = float32(0.0)
        if n < N:
            body = K - K % VEC                # whole groups of 8; the rest is the tail
            step = threads * VEC
            k = me * VEC
            while k + step < body:            # two 16-byte loads of w in flight per lane, then the math
                wa = load(w, n, k)
                wb = load(w, n, k + step)
                xa = load(x, 0, k)
                xb = load(x, 0, k + step)
                for j in range(VEC):
                    acc += xa[j] * wa[j]
                for j in range(VEC):
                    acc += xb[j] * wb[j]
                k += 2 * step
            if k < body:                      # an odd number of steps: the last one alone
                xv = load(x, 0, k)
                wv = load(w, n, k)
                for j in range(VEC):
                    acc += xv[j] * wv[j]
            for k in range(body + me, K, threads):      # the tail: the last K % 8 values, one each
                acc += float32(x[0, k]) * float32(w[n, k])

        offset = WARP // 2                    # whole warps get here, rows past N too
        while offset > 0:
            acc += shfl_down(acc, offset)
            offset //= 2
        if lane == 0:
            partial[warp] = acc
        cuda.syncthreads()                    # every warp's sum is in place
        if lane == 0 and part == 0 and n < N:
            total = float32(0.0)
            for p in range(warps_per_row):
                total += partial[warp + p]
            out[0, n] = total

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
        partial = cuda.shared.array((MAX_WARPS, GROUP), float32)   # one sum per warp and token
        T, N = out.shape
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row
        me = part * WARP + lane
        threads = warps_per_row * WARP
        t0 = cuda.blockIdx.y * GROUP          # this block's first token
        acc = cuda.local.array(GROUP, float32)
        for t in range(GROUP):
            acc[t] = float32(0.0)

        if n < N:
            body = K - K % VEC
            for k in range(me * VEC, body, threads * VEC):
                wv = load(w, n, k)            # read once ...
                for t in range(GROUP):        # ... used by every token of the group
                    if t0 + t < T:
                        xv = load(x, t0 + t, k)
                        for j in range(VEC):
                            acc[t] += xv[j] * wv[j]
            for k in range(body + me, K, threads):      # the tail, one value each
                wk = float32(w[n, k])
                for t in range(GROUP):
                    if t0 + t < T:
                        acc[t] += float32(x[t0 + t, k]) * wk

        for t in range(GROUP):
            if t0 + t < T:                    # the same for the whole block: every lane shuffles
                v = acc[t]
                offset = WARP // 2
                while offset > 0:
                    v += shfl_down(v, offset)
                    offset //= 2
                if lane == 0:
                    partial[warp, t] = v
        cuda.syncthreads()                    # every warp's sums are in place
        if lane == 0 and part == 0 and n < N:
            for t in range(GROUP):
                if t0 + t < T:
                    total = float32(0.0)
                    for p in range(warps_per_row):
                        total += partial[warp + p, t]
                    out[t0 + t, n] = total

    return skinny_kernel


skinny_wide = make_skinny_kernel(load8_wide)
skinny_any = make_skinny_kernel(load8)


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


def gemv_warps_per_row(N: int, K: int, warps: int) -> int:
    """A warp per row is enough for a tall matrix; a short one (N = 512) would keep only a few
    hundred warps busy: too few loads in flight to keep memory busy. Split each row's k over
    more warps until about BUSY_WARPS run, keeping at least two 8-wide steps per lane."""
    split = 1
    while split < warps and N * split < BUSY_WARPS and K >= 2 * (2 * split) * WARP * VEC:
        split *= 2
    return split


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
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: need x [T, in] and w [out, in] with the same `in`, "
                         f"got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if x.dtype != w.dtype:
        raise ValueError(f"linear: x is {x.dtype} but w is {w.dtype}; cast one so they match")
    if path not in ("auto", "gemv", "skinny", "gemm"):
        raise ValueError(f"linear: path must be 'auto', 'gemv', 'skinny' or 'gemm', got {path!r}")
    if block_size < WARP or block_size > WARP * MAX_WARPS or block_size & (block_size - 1):
        raise ValueError(f"linear: block_size must be a power of two from {WARP} to {WARP * MAX_WARPS}, "
                         f"got {block_size}")
    warps = block_size // WARP
    if warps_per_row is not None and (warps_per_row < 1 or warps_per_row > warps
                                      or warps_per_row & (warps_per_row - 1)):
        raise ValueError(f"linear: warps_per_row must be a power of two <= block_size // {WARP} = {warps}, "
                         f"got {warps_per_row}")
    T, K = x.shape
    N = w.shape[0]
    if path == "gemv" and T != 1:
        raise ValueError(f"linear: the gemv path computes one token, got T={T}; use path='gemm'")
    gpu.require_device(x, w)
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()                # an empty sum: nothing for a kernel to add
    if path == "auto":
        path = "gemv" if T == 1 else "skinny" if T <= AUTO_SKINNY_MAX_T else "gemm"
    if path in ("gemv", "skinny"):
        split = warps_per_row or gemv_warps_per_row(N, K, warps)
        # 16-byte loads need every row of w, and of x, to start on a 16-byte boundary
        wide = (x.dtype in (torch.float16, torch.float32) and x.is_contiguous() and w.is_contiguous()
                and x.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0 and K * x.element_size() % 16 == 0)
        rows = gpu.cdiv(N, warps // split)
        if path == "gemv":
            gpu.launch(gemv_wide if wide else gemv_any, rows, block_size, x, w, out, K, split)
        else:
            gpu.launch(skinny_wide if wide else skinny_any, (rows, gpu.cdiv(T, GROUP)), block_size, x, w, out, K, split)
    else:
        gpu.launch(gemm_kernel, (gpu.cdiv(N, TILE), gpu.cdiv(T, TILE)), (TILE, TILE), x, w, out, T, N, K)
    return out
