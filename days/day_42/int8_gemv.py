"""Day 42 -- making the INT8 GEMV fast: the decode step's int8 GEMVs, with day 54's fusions.

A decode step is four GEMVs per layer and the lm_head, and the fused forward of day 54 runs each
of them as `norm_linear` (the RMSNorm as the prologue; RoPE or the SwiGLU as the epilogue) or
`linear_add` (the residual add as the epilogue). With int8 weights (day 40's QuantWeight) the
same two functions run the kernel of this file: one kernel, one prologue, four epilogues.

- x sits in shared memory as fp32, chunk c of 16 values at xs[17 c ...] (one word of padding per
  chunk, so the 32 lanes reading value j of chunks c, c + 1, ... hit 32 different banks): each
  block normalizes (norm_linear) or copies (linear_add) the row once, then its warps stream
  weights only.
- a warp computes TWO rows at a time (plain, add: rows 2i and 2i + 1; gated: the gate and up
  rows of a feature; rotary: rows i and i + hd/2 of a head), so each x value read from shared
  memory serves two rows and a lane keeps four 16-byte loads in flight (two chunks x two rows).
- per 16 weights: one 16-byte load of q, 16 fp32 multiply-adds; the scale multiplies the chunk's
  sum (groups) or, per channel and per tensor, the row's whole sum once at the end.
- symmetric or asymmetric, grouped or not: compile-time constants of the kernel, so the engine's
  symmetric per-channel weights run no zero-point subtraction and no division for a group index.

Plain tensors go to the previous day that provides the name (the reference: nothing fused the
GEMVs before), so day 54's fp16 kernels can hand QuantWeights here and keep the rest.

Lesson: notes/day_42_int8_fast.md        Check: pytest checkers/day_42
"""
import functools
import math

import torch

from shared.quant import QuantWeight
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, int64, uint32
from numba.core.types import float16

from shared.runtime.vector_loads import load8, load8_wide, load16, load16_wide, shfl_down

DAY = 42
WARP = 32
VEC = 16              # int8 weights per lane per load: 16 bytes
PAD = VEC + 1         # shared-memory words per chunk of x: 16 values and one of padding
MAX_WARPS = 32        # scratch: one value per warp of the largest block (1024 threads)
BLOCKS_PER_SM = 4     # blocks per SM with 16-byte loads and a scale per row (at most 64 registers a thread:
                      # 4 blocks of 256 fit an SM); each block loops over groups of rows
BLOCKS_PER_SM_FEW = 2    # group scales or element loads: 82-164 registers a thread, 1-2 blocks of 256 fit
MAX_BLOCK = 256       # the largest block every variant launches with (up to 164 registers a thread; an SM
                      # has 64K)
SIM_SMS = 2           # the simulator: pretend 2 SMs, so blocks do loop over several groups of rows
MAX_SHARED = 48 * 1024   # x in shared memory (PAD / VEC words per column): the default per-block limit
EPILOGUES = ("plain", "gated", "rotary", "add")
TRACK = __name__.split(".")[0]      # "days" or "solutions": plain tensors stay on this track


# ---- given: where plain tensors go -----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def previous(name: str):
    """The `name` (norm_linear or linear_add) this day takes over from for plain tensors: the
    highest finished day before it that provides it, else the reference (torch: day 10's norm, a matmul)."""
    from shared.course import registry
    return registry.resolve_before(name, TRACK, DAY)


# ---- the kernel ------------------------------------------------------------------------------------
def make_kernel(load_x, load_q, epilogue, asym, grouped):
    """The int8 GEMV with its prologue and `epilogue`, reading x 8 values (`load_x`) and q 16 values
    (`load_q`) at a time. asym: subtract zero points; grouped: a scale per group of columns (else one
    per row, or one for the whole matrix). Each combination compiles to its own kernel."""
    gated, rotary, add = epilogue == "gated", epilogue == "rotary", epilogue == "add"
    norm = not add                      # linear_add copies x; the others normalize it

    @cuda.jit(device=True)
    def warp_sum(s):
        offset = WARP // 2
        while offset > 0:
            s += shfl_down(s, offset)
            offset //= 2
        return s

    @cuda.jit(device=True)
    def chunk(xs, c, qa, qb, za, zb):
        """sum_j x[16 c + j] * (q_j - zero) for two rows' 16 weights of chunk c, in fp32 (no
        scale): each x value is read from shared memory once for both rows. Two loops of 8 (the
        compiler unrolls them: qa[j] must be a register, not a lookup) and an unsigned index (no
        negative-index check): each read is one ld.shared at a fixed offset from the chunk's base."""
        # TODO(day 42): base = uint32(c) * uint32(PAD); two loops `for j in range(8)` (values j and 8 + j):
        #   xj = xs[base + uint32(j)], then s += xj * qa[j] and u += xj * qb[j] -- with asym, xj * (qa[j] - za)
        #   (the difference first: an exact integer). Keep `if asym:` inside the loop: asym is a constant of the
        #   kernel, so the symmetric kernel has no subtraction at all.
        s = float32(0.0)
        u = float32(0.0)
        return s, u

    @cuda.jit(device=True)
    def add_chunk(xs, c, qa, qb, scale, zero, group_size, s0, s1, za, zb, s, u):
        """Chunk c's two sums added to s and u: times the group's scales (grouped) or as they are
        (one scale per row: the caller multiplies the row's total once)."""
        # TODO(day 42): grouped: g = c * VEC // group_size; with asym, za and zb from zero[s0, g] and zero[s1, g];
        #   return s + ps * scale[s0, g], u + pu * scale[s1, g] for (ps, pu) = chunk(...). Not grouped: return
        #   s + ps, u + pu (the caller multiplies the row's whole sum by its one scale).
        return s, u

    @cuda.jit(device=True)
    def dot2(xs, q, scale, zero, group_size, r0, r1, body, K, lane):
        """This lane's share of rows r0 and r1 of (q - zero) @ x: chunks c = lane, lane + 32, ...,
        two per step (four 16-byte loads in flight), then the last K % 16 columns one each."""
        # TODO(day 42): s0 = r0 (r1) or 0 when scale has a single row (per tensor); za, zb = the zero points of
        #   s0, s1 (column 0) when asym and not grouped, else 0. Then day 54's row_dot2 with 16-wide chunks:
        #   c = lane; while c + WARP < body: FOUR loads first -- load_q(q, r0, c * VEC), load_q(q, r1, c * VEC), and
        #   the same at (c + WARP) * VEC -- then add_chunk for c and for c + WARP; c += 2 * WARP. An odd chunk
        #   alone (if c < body). The tail k = body * VEC + lane, ... < K one column each:
        #   xk = xs[uint32(k // VEC) * uint32(PAD) + uint32(k % VEC)], s += xk * (float32(q[r0, k]) - za), same for u.
        return float32(0.0), float32(0.0)

    @cuda.jit
    def kernel(x, norm_w, q, scale, zero, group_size, out, K, eps, half, positions, inv_freq, rot_rows, hd2):
        """Token t = blockIdx.y. Prologue: x[t] into shared memory (normalized: day 10's rounding).
        Then groups of `warps` items, the block striding over them; a warp per item, two rows each:
          plain   out[t, r]  = y[r]                     rows 2n, 2n + 1
          add     out[t, r] += y[r] (out is h)          rows 2n, 2n + 1
          gated   out[t, n]  = silu(y[n]) * y[n + F]    F = rows / 2
          rotary  rows i, i + hd2 of a head, rotated by positions[t] * inv_freq[i] below rot_rows
        with y = dequantize(w) @ x in fp32."""
        xs = cuda.shared.array(0, float32)           # x: PAD * chunks floats; rotary: then cos, sin [hd2]
        red = cuda.shared.array(MAX_WARPS, float32)
        t = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        lane = tid % WARP
        warp = tid // WARP
        warps = cuda.blockDim.x // WARP
        body = K // VEC                              # whole chunks of 16 (a last partial one: the tail)
        trig = uint32(PAD) * uint32((K + VEC - 1) // VEC)   # rotary: where the cos / sin table starts

        # 1. prologue: x[t] into shared memory, 8 values per load, and the sum of its squares
        acc = float32(0.0)
        for m in range(tid, K // 8, cuda.blockDim.x):
            v = load_x(x, t, m * 8)
            base = uint32(m // 2) * uint32(PAD) + uint32(m % 2) * uint32(8)   # half of chunk m // 2
            for j in range(8):
                xs[base + uint32(j)] = v[j]
                acc += v[j] * v[j]
        for k in range(K - K % 8 + tid, K, cuda.blockDim.x):     # the last K % 8 values
            v1 = float32(x[t, k])
            xs[uint32(k // VEC) * uint32(PAD) + uint32(k % VEC)] = v1
            acc += v1 * v1
        if rotary:                                   # this token's angles, once per block (day 12)
            for i in range(tid, hd2, cuda.blockDim.x):
                angle = float32(positions[t]) * inv_freq[i]
                xs[trig + uint32(i)] = math.cos(angle)
                xs[trig + uint32(hd2 + i)] = math.sin(angle)
        if norm:
            acc = warp_sum(acc)
            if lane == 0:
                red[warp] = acc
            cuda.syncthreads()                       # every warp's sum of squares (and x, the angles) in place
            total = float32(0.0)
            for p in range(warps):
                total += red[p]
            inv_rms = float32(1.0) / math.sqrt(total / float32(K) + float32(eps))
            for k in range(tid, K, cuda.blockDim.x):     # day 10's rounding, in place
                i = uint32(k // VEC) * uint32(PAD) + uint32(k % VEC)
                normed = xs[i] * inv_rms
                if half:
                    normed = float32(float16(normed))
                xn = float32(norm_w[k]) * normed
                if half:
                    xn = float32(float16(xn))
                xs[i] = xn
        cuda.syncthreads()                           # the whole row is in place

        # 2. the GEMV: a warp per item (two rows), groups of `warps` items
        # TODO(day 42): rows = q.shape[0]; items = rows // 2 (gated, rotary) or (rows + 1) // 2 (plain, add).
        #   group = blockIdx.x; while group * warps < items (the same for the whole block: every warp shuffles):
        #   n = group * warps + warp; the rows: plain / add r0 = 2n, r1 = min(2n + 1, rows - 1); gated r0 = n,
        #   r1 = n + items; rotary i = int64(uint32(n) % uint32(hd2)), r0 = (n - i) * 2 + i, r1 = r0 + hd2.
        #   s, u = dot2(...) if n < items (else 0); s = warp_sum(s); u = warp_sum(u) -- every warp, every item.
        #   Lane 0, n < items: not grouped -> s *= the scale of r0's row (row 0 per tensor), u *= r1's. Then
        #   add: round s, u to fp16 if half, out[t, r] = float32(out[t, r]) + s (and u to r0 + 1 when 2n + 1 < rows);
        #   gated / rotary: round s, u to fp16 if half first; gated out[t, n] = silu(s) * u (day 02, fp32);
        #   rotary below rot_rows: co = xs[trig + uint32(n) % uint32(hd2)], sn = xs[trig + uint32(hd2) + same],
        #   out[t, r0] = s * co - u * sn, out[t, r1] = u * co + s * sn, else store s, u as they are;
        #   plain: out[t, r0] = s (and u at r0 + 1 when 2n + 1 < rows). group += gridDim.x.
        pass

    return kernel


@functools.lru_cache(maxsize=None)
def kernel_for(wide: bool, epilogue: str, asym: bool, grouped: bool):
    """The kernel for one combination, made on first use (numba compiles it on its first launch)."""
    return make_kernel(load8_wide if wide else load8, load16_wide if wide else load16, epilogue, asym, grouped)


# ---- checks and launch -----------------------------------------------------------------------------
_SMS: dict = {}


def sm_count(device) -> int:
    """How many SMs the GPU has (cached per device): the kernel launches a few blocks per SM."""
    if gpu.SIM:
        return SIM_SMS
    index = torch.device(device).index or 0
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def _wide(*tensors) -> bool:
    """16-byte loads need every row to start on a 16-byte boundary."""
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 and t.shape[-1] * t.element_size() % 16 == 0
               for t in tensors)


def shared_bytes(K: int, hd2: int = 0) -> int:
    """x in shared memory, PAD fp32 words per chunk of 16 columns; rotary: cos and sin [hd2] after it."""
    return (PAD * gpu.cdiv(K, VEC) + 2 * hd2) * 4


def check_operands(name: str, x, w: QuantWeight, what: str, block_size: int) -> None:
    """One-line ValueErrors for what a caller can get wrong, before any launch (no value is read)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in (torch.float16, torch.float32):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: {what} must be float16 or float32 [T, in], got {got}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{name}: {what} is {tuple(x.shape)} but the QuantWeight is [out, in] = "
                         f"{tuple(w.shape)}: the `in` sizes differ")
    if w.granularity == "group" and w.group_size % VEC:
        raise ValueError(f"{name}: group_size {w.group_size} is not a multiple of {VEC} (a 16-byte load of q must "
                         "stay inside one group): quantize with group_size 32, 64 or 128")
    if shared_bytes(x.shape[1], 128) > MAX_SHARED:
        raise ValueError(f"{name}: in = {x.shape[1]} does not fit in shared memory as fp32 "
                         f"(at most {(MAX_SHARED // 4 - 256) // PAD * VEC} columns)")
    if block_size < WARP or block_size > WARP * MAX_WARPS or block_size & (block_size - 1):
        raise ValueError(f"{name}: block_size must be a power of two from {WARP} to {WARP * MAX_WARPS}, "
                         f"got {block_size}")


def launch(epilogue: str, x, norm_w, w: QuantWeight, out, eps: float, positions, inv_freq, rot_rows: int,
           hd2: int, block_size: int) -> None:
    """One launch of the kernel for `epilogue` over x [T, K]: (item groups, T) blocks of at most
    MAX_BLOCK threads."""
    block_size = min(block_size, MAX_BLOCK)
    T, K = x.shape
    rows = w.shape[0]
    items = rows // 2 if epilogue in ("gated", "rotary") else (rows + 1) // 2
    asym = w.zero is not None
    grouped = w.granularity == "group" and w.group_size < K     # one group per row is per channel
    wide = _wide(x, w.q)
    per_sm = BLOCKS_PER_SM if wide and not grouped else BLOCKS_PER_SM_FEW
    grid = min(gpu.cdiv(items, block_size // WARP), sm_count(x.device) * per_sm)
    kernel = kernel_for(wide, epilogue, asym, grouped)
    zero = w.zero if asym else w.q       # symmetric: never read (the kernel has no zero-point code)
    gpu.launch(kernel, (grid, T), block_size, x, norm_w, w.q, w.scale, zero, w.group_size, out, K, float(eps),
               x.dtype == torch.float16, positions, inv_freq, rot_rows, hd2,
               shared_bytes=shared_bytes(K, hd2 if epilogue == "rotary" else 0))


# ---- the two names the fused forward calls ----------------------------------------------------------
def norm_linear(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, w, *, gated: bool = False, rope=None,
                block_size: int = 256) -> torch.Tensor:
    """rmsnorm(h, norm_weight, eps) @ dequantize(w).T -> [T, out] in h's dtype (day 54's contract).

    w a QuantWeight [out, in] (symmetric or asymmetric; per tensor, channel or group of a multiple
    of 16 columns), h [T, in] fp16 or fp32, norm_weight [in] of h's dtype. gated: w = [gate; up]
    and the result is silu(gate) * up [T, out / 2]; rope = (positions int32 [T], inv_freq fp32
    [hd/2], heads): the first `heads` heads of hd rows come out rotated (day 12). The sums are fp32;
    gated and rotary round them to h's dtype first, as the unfused GEMV's output would be.
    A plain tensor w goes to the previous norm_linear. One-line ValueErrors for what does not fit.
    """
    # TODO(day 42): a plain tensor w -> previous("norm_linear")(h, norm_weight, eps, w, gated=gated, rope=rope).
    #   Then check_operands("norm_linear", h, w, "h", block_size); the norm weight [in] of h's dtype; gated: an even
    #   number of rows; rope as day 54 (positions int32 [T], inv_freq fp32 [hd2], heads * 2 * hd2 <= rows, rows a
    #   multiple of 2 * hd2, not with gated) -> rot_rows = heads * 2 * hd2; without rope pass norm_weight for
    #   positions and inv_freq, rot_rows 0 and hd2 1. gpu.require_device(...). out = torch.empty(T, N) in h's dtype
    #   (gated: N = rows / 2); nothing to launch when T or N is 0, zeros when in is 0; then
    #   launch("gated" | "rotary" | "plain", h, norm_weight, w, out, eps, positions, inv_freq, rot_rows, hd2, block_size).
    raise NotImplementedError("Day 42: norm_linear is not written yet -- edit days/day_42/int8_gemv.py "
                              "(lesson: notes/day_42_int8_fast.md)")


def linear_add(x: torch.Tensor, w, h: torch.Tensor, *, block_size: int = 256) -> None:
    """h += x @ dequantize(w).T IN PLACE (day 54's contract): the product rounded to h's dtype,
    then added and rounded again, as HF's h = h + o_proj(a).

    w a QuantWeight [out, in], x [T, in] and h [T, out] of one dtype (fp16 or fp32), h contiguous.
    A plain tensor w goes to the previous linear_add. One-line ValueErrors for what does not fit.
    """
    # TODO(day 42): a plain tensor w -> previous("linear_add")(x, w, h). Then check_operands("linear_add", x, w, "x",
    #   block_size); h [T, out] of x's dtype and contiguous (one-line ValueErrors); gpu.require_device(...); nothing to
    #   do when T, out or in is 0; else launch("add", x, unused, w, h, 0.0, unused, unused, 0, 1, block_size) with
    #   unused = w.scale.view(-1) (an fp32 array the kernel never reads).
    raise NotImplementedError("Day 42: linear_add is not written yet -- edit days/day_42/int8_gemv.py "
                              "(lesson: notes/day_42_int8_fast.md)")
