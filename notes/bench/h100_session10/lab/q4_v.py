"""Lab: two 4-bit GEMV designs against day 47's.
v1 (W4A16, same numbers up to summation order): day 47's kernel with TWO blocks per lane per step, both
    16-byte loads (and their d, m) issued before any arithmetic, and split accumulators (lo / hi nibbles).
v2 (W4A8, llama.cpp's vec_dot_q4_1_q8_1): x quantized once per call into int8 blocks of 32 (scale dx,
    and the sum of the dequantized block sx); per block and row 8 dp4a on nibbles masked 0x0F0F0F0F:
    y += d * dx * isum + m * sx."""
import torch
from shared.runtime import gpu
from numba import cuda, float32, int32
from shared.q4 import BLOCK, Q4Weight
from shared.runtime.dp4a import dp4a, load4_words_wide
from shared.runtime.vector_loads import load8, load8_wide, shfl_down, shfl_xor

WARP = 32
MAX_WARPS = 32
BUSY_WARPS = 4096


@cuda.jit(device=True)
def load4_words(a, row, j):
    return a[row, j], a[row, j + 1], a[row, j + 2], a[row, j + 3]


def split_for(N, K, warps):
    split = 1
    while split < warps and N * split < BUSY_WARPS and K >= 2 * (2 * split) * WARP * BLOCK:
        split *= 2
    return split


# ---- v1 ----
def make_v1(load_x, load_w):
    @cuda.jit(device=True)
    def block_dot(x, k, words):
        lo = float32(0.0)
        hi = float32(0.0)
        sx = float32(0.0)
        xa = load_x(x, 0, k)
        xb = load_x(x, 0, k + 8)
        xc = load_x(x, 0, k + 16)
        xd = load_x(x, 0, k + 24)
        for j in range(4):
            w = words[j]
            for jj in range(4):
                i = 4 * j + jj
                if i < 8:
                    xl = xa[i]
                    xh = xc[i]
                else:
                    xl = xb[i - 8]
                    xh = xd[i - 8]
                lo += xl * float32((w >> (8 * jj)) & 0xF)
                hi += xh * float32((w >> (8 * jj + 4)) & 0xF)
                sx += xl + xh
        return lo + hi, sx

    @cuda.jit
    def kernel(x, qw, d, m, group_size, out, K, warps_per_row):
        partial = cuda.shared.array(MAX_WARPS, float32)
        N = out.shape[1]
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row
        me = part * WARP + lane
        threads = warps_per_row * WARP
        nb = K // BLOCK
        acc = float32(0.0)
        acc2 = float32(0.0)
        if n < N:
            b = me
            while b + threads < nb:
                c = b + threads
                wa = load_w(qw, n, 4 * b)
                wb = load_w(qw, n, 4 * c)
                ga = (b * BLOCK) // group_size
                gb = (c * BLOCK) // group_size
                da = float32(d[n, ga])
                ma = float32(m[n, ga])
                db = float32(d[n, gb])
                mb = float32(m[n, gb])
                sa, xa = block_dot(x, b * BLOCK, wa)
                sb, xb = block_dot(x, c * BLOCK, wb)
                acc += da * sa + ma * xa
                acc2 += db * sb + mb * xb
                b += 2 * threads
            if b < nb:
                ga = (b * BLOCK) // group_size
                sa, xa = block_dot(x, b * BLOCK, load_w(qw, n, 4 * b))
                acc += float32(d[n, ga]) * sa + float32(m[n, ga]) * xa
        acc += acc2
        offset = WARP // 2
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
            out[0, n] = total
    return kernel


V1 = {True: make_v1(load8_wide, load4_words_wide), False: make_v1(load8, load4_words)}


def linear_v1(x, w: Q4Weight, block_size=128):
    T, K = x.shape
    N = w.shape[0]
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    qw = w.qs.view(torch.int32)
    wide = x.is_contiguous() and w.qs.is_contiguous() and x.data_ptr() % 16 == 0 and w.qs.data_ptr() % 16 == 0
    warps = block_size // WARP
    split = split_for(N, K, warps)
    gpu.launch(V1[wide], gpu.cdiv(N, warps // split), block_size, x, qw, w.d, w.m, w.group_size, out, K, split)
    return out


# ---- v2 ----
@cuda.jit
def quantize_x_kernel(x, xq, xd, xs):
    """One warp per block of 32 values: lane i takes x[32 b + i]; scale = max|x| / 127."""
    b = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
    lane = cuda.threadIdx.x % WARP
    nb = xd.shape[0]
    v = float32(0.0)
    if b < nb:
        v = float32(x[0, b * BLOCK + lane])
    a = abs(v)
    offset = WARP // 2
    while offset > 0:
        a = max(a, shfl_xor(a, offset))
        offset //= 2
    amax = a
    return_scale = amax / float32(127.0)
    q = int32(0)
    if return_scale > 0:
        q = int32(round(v / return_scale))
    s = float32(q) * return_scale
    offset = WARP // 2
    while offset > 0:
        s += shfl_down(s, offset)
        offset //= 2
    if b < nb:
        xq[b * BLOCK + lane] = q
        if lane == 0:
            xd[b] = return_scale
            xs[b] = s


def make_v2(load_w):
    @cuda.jit
    def kernel(xw, xd, xs, qw, d, m, group_size, out, K, warps_per_row):
        partial = cuda.shared.array(MAX_WARPS, float32)
        N = out.shape[1]
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row
        me = part * WARP + lane
        threads = warps_per_row * WARP
        nb = K // BLOCK
        acc = float32(0.0)
        if n < N:
            for b in range(me, nb, threads):
                w = load_w(qw, n, 4 * b)
                xa = load_w(xw, 0, 8 * b)
                xb = load_w(xw, 0, 8 * b + 4)
                isum = int32(0)
                for j in range(4):
                    lo = w[j] & 0x0F0F0F0F
                    hi = (w[j] >> 4) & 0x0F0F0F0F
                    isum = dp4a(lo, xa[j], isum)
                    isum = dp4a(hi, xb[j], isum)
                g = (b * BLOCK) // group_size
                acc += float32(d[n, g]) * xd[b] * float32(isum) + float32(m[n, g]) * xs[b]
        offset = WARP // 2
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
            out[0, n] = total
    return kernel


V2 = {True: make_v2(load4_words_wide), False: make_v2(load4_words)}


def quantize_x(x):
    K = x.shape[1]
    nb = K // BLOCK
    xq = torch.empty(1, K, dtype=torch.int8, device=x.device)
    xd = torch.empty(nb, dtype=torch.float32, device=x.device)
    xs = torch.empty(nb, dtype=torch.float32, device=x.device)
    gpu.launch(quantize_x_kernel, gpu.cdiv(nb, 4), 128, x, xq.view(-1), xd, xs)
    return xq, xd, xs


def linear_v2(x, w: Q4Weight, block_size=128, xqs=None):
    T, K = x.shape
    N = w.shape[0]
    xq, xd, xs = xqs if xqs is not None else quantize_x(x)
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    qw = w.qs.view(torch.int32)
    xw = xq.view(torch.int32)
    wide = w.qs.is_contiguous() and w.qs.data_ptr() % 16 == 0 and xq.data_ptr() % 16 == 0
    warps = block_size // WARP
    split = split_for(N, K, warps)
    gpu.launch(V2[wide], gpu.cdiv(N, warps // split), block_size, xw, xd, xs, qw, w.d, w.m, w.group_size, out, K, split)
    return out
