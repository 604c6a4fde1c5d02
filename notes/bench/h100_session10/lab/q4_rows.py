"""Lab: day 47's 4-bit GEMV with R rows per warp. A lane loads its block of x once (32 values),
sums it once, then the nibbles of the same block for R rows -- R 16-byte loads in flight before
any arithmetic -- so x's loads and sum(x) are shared by R rows and each lane has R times the bytes
in flight. Rows past N are clamped for the loads and not written."""
import torch
from shared.runtime import gpu
from numba import cuda, float32
from shared.q4 import BLOCK, Q4Weight
from shared.runtime.dp4a import load4_words_wide
from shared.runtime.vector_loads import load8, load8_wide, shfl_down

WARP = 32


@cuda.jit(device=True)
def load4_words(a, row, j):
    return a[row, j], a[row, j + 1], a[row, j + 2], a[row, j + 3]


@cuda.jit(device=True)
def dot_block(words, x0, x1, x2, x3):
    """sum_j x[j] * nibble_j over one block: x0, x1 = weights 0..15 (low nibbles), x2, x3 = 16..31."""
    s = float32(0.0)
    for j in range(4):
        w = words[j]
        for jj in range(4):
            i = 4 * j + jj
            lo = float32((w >> (8 * jj)) & 0xF)
            hi = float32((w >> (8 * jj + 4)) & 0xF)
            if i < 8:
                s += x0[i] * lo + x2[i] * hi
            else:
                s += x1[i - 8] * lo + x3[i - 8] * hi
    return s


def make_rows(R, load_x, load_w):
    @cuda.jit
    def kernel(x, qw, d, m, group_size, out, K):
        N = out.shape[1]
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        row0 = (cuda.blockIdx.x * (cuda.blockDim.x // WARP) + warp) * R
        acc = cuda.local.array(R, float32)
        for r in range(R):
            acc[r] = float32(0.0)
        nb = K // BLOCK
        for b in range(lane, nb, WARP):
            k = b * BLOCK
            g = k // group_size
            # the nibbles of R rows first: R loads in flight
            w0 = load_w(qw, min(row0, N - 1), 4 * b)
            if R > 1:
                w1 = load_w(qw, min(row0 + 1, N - 1), 4 * b)
            if R > 2:
                w2 = load_w(qw, min(row0 + 2, N - 1), 4 * b)
                w3 = load_w(qw, min(row0 + 3, N - 1), 4 * b)
            x0 = load_x(x, 0, k)
            x1 = load_x(x, 0, k + 8)
            x2 = load_x(x, 0, k + 16)
            x3 = load_x(x, 0, k + 24)
            sx = float32(0.0)
            for i in range(8):
                sx += (x0[i] + x1[i]) + (x2[i] + x3[i])
            r = min(row0, N - 1)
            acc[0] += float32(d[r, g]) * dot_block(w0, x0, x1, x2, x3) + float32(m[r, g]) * sx
            if R > 1:
                r = min(row0 + 1, N - 1)
                acc[1] += float32(d[r, g]) * dot_block(w1, x0, x1, x2, x3) + float32(m[r, g]) * sx
            if R > 2:
                r = min(row0 + 2, N - 1)
                acc[2] += float32(d[r, g]) * dot_block(w2, x0, x1, x2, x3) + float32(m[r, g]) * sx
                r = min(row0 + 3, N - 1)
                acc[3] += float32(d[r, g]) * dot_block(w3, x0, x1, x2, x3) + float32(m[r, g]) * sx
        for r in range(R):
            s = acc[r]
            offset = WARP // 2
            while offset > 0:
                s += shfl_down(s, offset)
                offset //= 2
            if lane == 0 and row0 + r < N:
                out[0, row0 + r] = s
    return kernel


KERNELS = {}


def linear_rows(x, w: Q4Weight, R=4, block_size=128):
    assert R in (1, 2, 4)
    T, K = x.shape
    N = w.shape[0]
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    qw = w.qs.view(torch.int32)
    wide = x.is_contiguous() and w.qs.is_contiguous() and x.data_ptr() % 16 == 0 and w.qs.data_ptr() % 16 == 0
    key = (R, wide)
    if key not in KERNELS:
        KERNELS[key] = make_rows(R, load8_wide if wide else load8, load4_words_wide if wide else load4_words)
    warps = block_size // WARP
    gpu.launch(KERNELS[key], gpu.cdiv(N, warps * R), block_size, x, qw, w.d, w.m, w.group_size, out, K)
    return out
