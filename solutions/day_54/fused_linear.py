"""Day 54 -- the RMSNorm and the residual add folded into the decode GEMV.

At decode a small kernel costs a few microseconds whatever its bytes, and add_rmsnorm is one
of those per sub-block. The norm and the add both touch a single row of `hidden` values, so
the GEMVs on either side can do them as a prologue and an epilogue:
- norm_linear(h, norm_weight, eps, w) = rmsnorm(h) @ w.T. Every block first normalizes the row
  h (a few KB, from L2) into shared memory, then its warps take rows of w as day 11's GEMV does,
  reading x from shared memory. A block loops over many rows, so the prologue is paid a few
  hundred times per matrix, not once per row. gated=True: w = [gate; up], a warp computes both
  rows of a feature and writes silu(gate) * up (the SwiGLU as the epilogue). rope=...: w = wqkv,
  a warp computes rows i and i + hd/2 of a head and rotates q and k by their position (day
  12's RoPE as the epilogue).
- linear_add(x, w, h): h += x @ w.T in place. Day 11's GEMV whose row owner adds its sum to h[n].
Both take fp16 / fp32 weights; a QuantWeight (int8, --quant w8a16) goes to the previous day that
provides the name (day 42's int8 kernels with the same fusions), as day 48's linear hands it to day 41;
a Q4Weight (4-bit, --quant w4a16 / gguf) likewise, to day 47's unfused norm_linear / linear_add.

Lesson: notes/day_54_fusion.md ("Folding the norm and the add into the GEMV")
Check: pytest checkers/day_54
"""
import functools
import math

import torch

from shared.q4 import Q4Weight
from shared.quant import QuantWeight
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32
from numba.core.types import float16

from shared.runtime.vector_loads import load8, load8_wide, shfl_down

WARP = 32
VEC = 8               # each lane takes 8 consecutive k per step (16 bytes of fp16)
MAX_WARPS = 32        # scratch: one value per warp of the largest block (1024 threads)
BUSY_WARPS = 4096     # linear_add: split short matrices' rows over more warps until about this many run
BLOCKS_PER_SM = 4     # norm_linear: resident blocks per SM (64 registers a thread: 4 of 256 fill an SM); each loops over rows
SIM_SMS = 2           # the simulator: pretend 2 SMs, so blocks do loop over several groups of rows
DAY = 54
TRACK = __name__.split(".")[0]      # "days" or "solutions"


# ---- given: where int8 weights go ---------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def previous(name: str):
    """The norm_linear / linear_add a QuantWeight goes to: the highest finished day before this one
    that provides `name` (day 42's int8 kernels), else the reference (dequantize, then multiply)."""
    from shared.course import registry
    return registry.resolve_before(name, TRACK, DAY)


def make_norm_gemv(load, gated, rotary):
    """norm_linear's kernel, reading 8 values at a time with `load` (load8_wide or load8).
    gated: w holds gate rows then up rows, and each warp ends with day 02's silu(gate) * up.
    rotary: w holds heads of hd rows; a warp takes rows i and i + hd/2 of a head and rotates the
    pair by its position (day 12's RoPE) if the head is one of the first `rot_rows / hd`."""

    @cuda.jit(device=True)
    def row_dot(xs, w, n, C, body, K, lane):
        """This lane's share of sum_k x[k] * w[n, k], x from shared memory: two 16-byte loads of w
        in flight per step, then the last K % 8 values one each."""
        s = float32(0.0)
        c = lane
        while c + WARP < body:
            wa = load(w, n, c * VEC)
            wb = load(w, n, (c + WARP) * VEC)
            for j in range(VEC):
                s += xs[j * C + c] * wa[j]
            for j in range(VEC):
                s += xs[j * C + c + WARP] * wb[j]
            c += 2 * WARP
        if c < body:
            wa = load(w, n, c * VEC)
            for j in range(VEC):
                s += xs[j * C + c] * wa[j]
        for k in range(body * VEC + lane, K, WARP):
            s += xs[(k % VEC) * C + k // VEC] * float32(w[n, k])
        return s

    @cuda.jit(device=True)
    def row_dot2(xs, w, r0, r1, C, body, K, lane):
        """row_dot for two rows at once (gated: gate and up; rotary: a pair of a head): four loads
        of w in flight per step instead of two, and each value of x read once for both rows."""
        s = float32(0.0)
        u = float32(0.0)
        c = lane
        while c + WARP < body:
            wa = load(w, r0, c * VEC)
            wb = load(w, r0, (c + WARP) * VEC)
            ua = load(w, r1, c * VEC)
            ub = load(w, r1, (c + WARP) * VEC)
            for j in range(VEC):
                xj = xs[j * C + c]
                s += xj * wa[j]
                u += xj * ua[j]
            for j in range(VEC):
                xj = xs[j * C + c + WARP]
                s += xj * wb[j]
                u += xj * ub[j]
            c += 2 * WARP
        if c < body:
            wa = load(w, r0, c * VEC)
            ua = load(w, r1, c * VEC)
            for j in range(VEC):
                xj = xs[j * C + c]
                s += xj * wa[j]
                u += xj * ua[j]
        for k in range(body * VEC + lane, K, WARP):
            xk = xs[(k % VEC) * C + k // VEC]
            s += xk * float32(w[r0, k])
            u += xk * float32(w[r1, k])
        return s, u

    @cuda.jit(device=True)
    def warp_sum(s):
        offset = WARP // 2
        while offset > 0:
            s += shfl_down(s, offset)
            offset //= 2
        return s

    @cuda.jit
    def norm_gemv_kernel(h, norm_w, w, out, K, eps, half, positions, inv_freq, rot_rows, hd2):
        """out[t, n] = sum_k rmsnorm(h[t])[k] * w[n, k] for token t = blockIdx.y; a warp per row n
        (gated: per pair of rows n and n + N, then silu(gate) * up; rotary: per pair of rows i and
        i + hd2 of a head, rotated by positions[t] * inv_freq[i] when the rows are below rot_rows).

        Shared memory holds the normalized row transposed by 8: xs[j * C + c] = x[8 * c + j], so
        a lane reading its chunk c for j = 0..7 and its neighbours reading c + 1, ... hit
        consecutive words (no bank conflicts)."""
        xs = cuda.shared.array(0, float32)          # 8 * C floats (dynamic: the launch sizes it)
        red = cuda.shared.array(MAX_WARPS, float32)
        t = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        lane = tid % WARP
        warp = tid // WARP
        warps = cuda.blockDim.x // WARP
        C = (K + VEC - 1) // VEC                    # chunks of 8, the last one maybe partial
        body = K // VEC                             # whole chunks

        # 1. prologue: h[t] into shared memory, and the sum of its squares
        acc = float32(0.0)
        for c in range(tid, body, cuda.blockDim.x):
            v = load(h, t, c * VEC)
            for j in range(VEC):
                xs[j * C + c] = v[j]
                acc += v[j] * v[j]
        for k in range(body * VEC + tid, K, cuda.blockDim.x):     # the last K % 8 values
            v1 = float32(h[t, k])
            xs[(k % VEC) * C + k // VEC] = v1
            acc += v1 * v1
        acc = warp_sum(acc)
        if lane == 0:
            red[warp] = acc
        cuda.syncthreads()                          # every warp's sum of squares is in place
        total = float32(0.0)
        for p in range(warps):
            total += red[p]
        inv_rms = float32(1.0) / math.sqrt(total / float32(K) + float32(eps))
        # 2. scale in place, day 10's rounding: h * inv_rms to h's dtype, then times the weight
        for k in range(tid, K, cuda.blockDim.x):
            i = (k % VEC) * C + k // VEC
            normed = xs[i] * inv_rms
            if half:
                normed = float32(float16(normed))
            x = float32(norm_w[k]) * normed
            if half:
                x = float32(float16(x))
            xs[i] = x
        cuda.syncthreads()                          # the whole normalized row is in place

        # 3. the GEMV: groups of `warps` items (rows, or pairs of rows), the block striding over them
        items = out.shape[1] // 2 if rotary else out.shape[1]
        group = cuda.blockIdx.x
        while group * warps < items:                # the same for every warp: all of them shuffle
            n = group * warps + warp
            r0 = n                                  # the rows this warp computes: r0 (and r1)
            r1 = n + items                          # gated: the up row of feature n
            if rotary:                              # rows i and i + hd2 of head n // hd2
                r0 = (n // hd2) * 2 * hd2 + n % hd2
                r1 = r0 + hd2
            s = float32(0.0)
            u = float32(0.0)
            if n < items:
                if gated or rotary:             # both rows in one pass: twice the loads in flight
                    s, u = row_dot2(xs, w, r0, r1, C, body, K, lane)
                else:
                    s = row_dot(xs, w, r0, C, body, K, lane)
            s = warp_sum(s)
            if gated or rotary:
                u = warp_sum(u)
            if lane == 0 and n < items:
                if (gated or rotary) and half:      # the sums as the unfused GEMV would store them
                    s = float32(float16(s))
                    u = float32(float16(u))
                if gated:                           # day 02's silu_mul: fp32, one rounding
                    out[t, n] = s / (float32(1.0) + math.exp(-s)) * u
                elif rotary:
                    if r0 < rot_rows:               # a q or k head: day 12's rotation in fp32
                        angle = float32(positions[t]) * inv_freq[n % hd2]
                        c = math.cos(angle)
                        sn = math.sin(angle)
                        out[t, r0] = s * c - u * sn
                        out[t, r1] = u * c + s * sn
                    else:                           # a v head: stored as it is
                        out[t, r0] = s
                        out[t, r1] = u
                else:
                    out[t, r0] = s
            group += cuda.gridDim.x

    return norm_gemv_kernel


NORM_GEMV = {(wide, epilogue): make_norm_gemv(load8_wide if wide else load8, epilogue == "gated",
                                              epilogue == "rotary")
             for wide in (True, False) for epilogue in ("plain", "gated", "rotary")}   # 16-byte loads or any


def make_gemv_add(load):
    """linear_add's kernel: day 11's GEMV with the residual add as its last line."""

    @cuda.jit
    def gemv_add_kernel(x, w, h, K, warps_per_row, half):
        """h[t, n] += sum_k x[t, k] * w[n, k] for token t = blockIdx.y, `warps_per_row` warps per
        row. The sum is rounded to h's dtype first (the GEMV's output), then added and rounded
        again (HF's residual add in the model dtype)."""
        partial = cuda.shared.array(MAX_WARPS, float32)
        N = h.shape[1]
        t = cuda.blockIdx.y
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        n = cuda.blockIdx.x * (cuda.blockDim.x // WARP // warps_per_row) + warp // warps_per_row
        part = warp % warps_per_row
        me = part * WARP + lane
        threads = warps_per_row * WARP

        acc = float32(0.0)
        if n < N:
            body = K - K % VEC
            step = threads * VEC
            k = me * VEC
            while k + step < body:
                wa = load(w, n, k)
                wb = load(w, n, k + step)
                xa = load(x, t, k)
                xb = load(x, t, k + step)
                for j in range(VEC):
                    acc += xa[j] * wa[j]
                for j in range(VEC):
                    acc += xb[j] * wb[j]
                k += 2 * step
            if k < body:
                xv = load(x, t, k)
                wv = load(w, n, k)
                for j in range(VEC):
                    acc += xv[j] * wv[j]
            for k in range(body + me, K, threads):
                acc += float32(x[t, k]) * float32(w[n, k])

        offset = WARP // 2
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
            if half:
                total = float32(float16(total))   # the projection's output, in the model dtype
            h[t, n] = float32(h[t, n]) + total    # the residual add; the store rounds

    return gemv_add_kernel


gemv_add_wide = make_gemv_add(load8_wide)
gemv_add_any = make_gemv_add(load8)


_SMS: dict = {}


def sm_count(device) -> int:
    """How many SMs the GPU has (cached per device): norm_linear launches a few blocks per SM."""
    if gpu.SIM:
        return SIM_SMS
    index = torch.device(device).index or 0
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def _check_block(name: str, block_size: int) -> None:
    if block_size < WARP or block_size > WARP * MAX_WARPS or block_size & (block_size - 1):
        raise ValueError(f"{name}: block_size must be a power of two from {WARP} to {WARP * MAX_WARPS}, "
                         f"got {block_size}")


def _wide(*tensors) -> bool:
    """16-byte loads need every row to start on a 16-byte boundary."""
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 and t.shape[-1] * t.element_size() % 16 == 0
               for t in tensors)


def _rows(name: str, h: torch.Tensor, w: torch.Tensor, what: str) -> None:
    if h.dim() != 2 or w.dim() != 2 or h.shape[1] != w.shape[1]:
        raise ValueError(f"{name}: need {what} [T, in] and w [out, in] with the same `in`, "
                         f"got {tuple(h.shape)} and {tuple(w.shape)}")
    if h.dtype not in (torch.float16, torch.float32) or w.dtype != h.dtype:
        raise ValueError(f"{name}: {what} is {h.dtype} and w is {w.dtype}; use float16 or float32 for both")


def norm_linear(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, w: torch.Tensor, *,
                gated: bool = False, rope=None, block_size: int = 256) -> torch.Tensor:
    """rmsnorm(h, norm_weight, eps) @ w.T -> [T, out] in h's dtype, with day 10's rounding.

    h [T, in], norm_weight [in], w [out, in], one dtype (fp16 or fp32). Every block normalizes
    its token's row into shared memory, then a warp per row of w computes the dot products.
    gated: w is [gate; up] (2 * F rows, as w_gate_up) and the result is silu_mul(gate, up)
    [T, F]: a warp computes both rows of a feature, so the SwiGLU needs no launch of its own.
    rope = (positions int32 [T], inv_freq fp32 [hd/2], heads): w is made of heads of hd rows
    (wqkv) and the first `heads` of them (q and k) come out rotated as day 12's rope would
    rotate them; the rest (v) as they are.
    It reads w once per token: meant for decode (T == 1); the forward keeps the tiled GEMM for
    prefill. Raise ValueError (one line) for shapes or dtypes that do not fit, a norm_weight
    that is not [in], a gated w with an odd number of rows, a rope that does not fit w, gated and
    rope together, or a block_size that is not a power of two from 32 to 1024.
    A QuantWeight w goes to previous("norm_linear") (given).
    """
    if isinstance(w, (QuantWeight, Q4Weight)):    # int8 weights: day 42's kernels; 4-bit: day 47's
        return previous("norm_linear")(h, norm_weight, eps, w, gated=gated, rope=rope)
    _rows("norm_linear", h, w, "h")
    if norm_weight.dim() != 1 or norm_weight.shape[0] != h.shape[1] or norm_weight.dtype != h.dtype:
        raise ValueError(f"norm_linear: norm_weight must be [{h.shape[1]}] of {h.dtype}, "
                         f"got {tuple(norm_weight.shape)} {norm_weight.dtype}")
    _check_block("norm_linear", block_size)
    gpu.require_device(h, norm_weight, w)
    if gated and w.shape[0] % 2:
        raise ValueError(f"norm_linear: gated=True needs w = [gate; up] with an even number of rows, got {w.shape[0]}")
    positions, inv_freq, rot_rows, hd2 = norm_weight, norm_weight, 0, 1   # unused unless rope is given
    if rope is not None:
        positions, inv_freq, heads = rope
        hd2 = inv_freq.shape[0] if inv_freq.dim() == 1 else 0
        if gated or hd2 == 0 or w.shape[0] % (2 * hd2) or not 0 <= heads * 2 * hd2 <= w.shape[0] \
                or positions.shape != (h.shape[0],) or positions.dtype != torch.int32 or inv_freq.dtype != torch.float32:
            raise ValueError(f"norm_linear: rope must be (positions int32 [T], inv_freq fp32 [hd/2], heads) for w of "
                             f"whole heads of hd rows, heads * hd <= {w.shape[0]}, and not with gated=True")
        rot_rows = heads * 2 * hd2
        gpu.require_device(positions, inv_freq)
    T, K = h.shape
    N = w.shape[0] // 2 if gated else w.shape[0]
    out = torch.empty(T, N, dtype=h.dtype, device=h.device)
    if T == 0 or N == 0:
        return out
    if K == 0:                                     # x = 0: every sum is 0, and so is silu(0) * 0
        return out.zero_()
    epilogue = "gated" if gated else "rotary" if rope is not None else "plain"
    items = N // 2 if epilogue == "rotary" else N          # a warp per row, or per pair of rows
    grid = min(gpu.cdiv(items, block_size // WARP), sm_count(h.device) * BLOCKS_PER_SM)
    shared = VEC * gpu.cdiv(K, VEC) * 4            # the normalized row, fp32
    gpu.launch(NORM_GEMV[_wide(h, w), epilogue], (grid, T), block_size, h, norm_weight, w, out, K, float(eps),
               h.dtype == torch.float16, positions, inv_freq, rot_rows, hd2, shared_bytes=shared)
    return out


def linear_add(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, *, block_size: int = 128,
               warps_per_row: int | None = None) -> None:
    """h += x @ w.T IN PLACE: the residual add as the GEMV's last line.

    x [T, in], w [out, in], h [T, out], one dtype (fp16 or fp32). The product is rounded to
    h's dtype, then added to h and rounded again, as HF's `h = h + o_proj(a)`. Raise ValueError
    (one line) for shapes or dtypes that do not fit, an h that is not contiguous (the update
    must land in h itself), or a bad block_size / warps_per_row (powers of two, as day 11).
    A QuantWeight w goes to previous("linear_add") (given).
    """
    if isinstance(w, (QuantWeight, Q4Weight)):    # int8 weights: day 42's kernels; 4-bit: day 47's
        return previous("linear_add")(x, w, h)
    _rows("linear_add", x, w, "x")
    if h.shape != (x.shape[0], w.shape[0]) or h.dtype != x.dtype:
        raise ValueError(f"linear_add: h must be [T, out] = [{x.shape[0]}, {w.shape[0]}] of {x.dtype}, "
                         f"got {tuple(h.shape)} {h.dtype}")
    if not h.is_contiguous():
        raise ValueError("linear_add: h must be contiguous (the kernel adds into it in place); "
                         "pass the residual stream itself, not a strided view")
    _check_block("linear_add", block_size)
    warps = block_size // WARP
    if warps_per_row is not None and (warps_per_row < 1 or warps_per_row > warps
                                      or warps_per_row & (warps_per_row - 1)):
        raise ValueError(f"linear_add: warps_per_row must be a power of two <= block_size // {WARP} = {warps}, "
                         f"got {warps_per_row}")
    gpu.require_device(x, w, h)
    T, K = x.shape
    N = w.shape[0]
    if T == 0 or N == 0 or K == 0:
        return                                     # an empty sum adds nothing
    split = warps_per_row or 1
    if warps_per_row is None:                      # day 11's rule: keep about BUSY_WARPS warps busy
        while split < warps and N * split < BUSY_WARPS and K >= 4 * split * WARP * VEC:
            split *= 2
    kernel = gemv_add_wide if _wide(x, w) else gemv_add_any
    gpu.launch(kernel, (gpu.cdiv(N, warps // split), T), block_size, x, w, h, K, split,
               h.dtype == torch.float16)
