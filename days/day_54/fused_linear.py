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
        # TODO(day 54): day 11's loop for one row, x from xs: chunks c = lane, lane + 32, ... of w[n]
        # (two `load`s in flight per step), value j of chunk c times xs[j * C + c]; then the last
        # K % 8 values one each, k = body * 8 + lane, ... with xs[(k % 8) * C + k // 8].
        s = float32(0.0)
        return s

    @cuda.jit(device=True)
    def warp_sum(s):
        # TODO(day 54): the warp's sum with shfl_down (offsets 16, 8, 4, 2, 1); lane 0 holds it.
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
        # TODO(day 54): t = blockIdx.y; C = ceil(K / 8) chunks, body = K // 8 whole ones.
        # 1. prologue: each thread loads chunks c = tid, tid + blockDim.x, ... of h[t] with `load`,
        #    stores value j at xs[j * C + c] and adds its square to an fp32 acc; then the last K % 8
        #    values one each (same index rule). warp_sum(acc), lane 0 writes red[warp],
        #    cuda.syncthreads(), and every thread adds up red[0 .. warps-1] itself.
        # 2. inv_rms = 1 / sqrt(total / K + eps); scale every xs entry in place with day 10's
        #    rounding: normed = x * inv_rms (rounded to fp16 if `half`), then norm_w[k] * normed
        #    (rounded again if `half`). cuda.syncthreads() before anyone reads xs.
        # 3. the GEMV, a warp per item: items = out.shape[1] (rotary: half of it, pairs of rows);
        #    group = blockIdx.x; while group * warps < items: item n = group * warps + warp, rows
        #    r0 = n (plain, gated) or (n // hd2) * 2 * hd2 + n % hd2 (rotary), r1 = n + items (gated:
        #    the up row) or r0 + hd2 (rotary: the partner in the head). s = row_dot of r0 and, when
        #    gated or rotary, u = row_dot of r1; warp_sum every lane, items past the end too (the
        #    simulator's shuffles are barriers). Lane 0: plain -> out[t, r0] = s. Gated or rotary:
        #    round s and u to h's dtype first when `half` (as the unfused GEMV stores them), then
        #    gated -> out[t, n] = silu(s) * u in fp32 (day 02); rotary -> if r0 < rot_rows rotate
        #    with angle = float32(positions[t]) * inv_freq[n % hd2] as day 12 (s*c - u*sin into r0,
        #    u*c + s*sin into r1), else store s and u as they are. group += gridDim.x.
        pass

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
        # TODO(day 54): day 11's GEMV (copy your kernel's body) for token t = blockIdx.y: x[t] instead
        # of x[0]. The last step changes: the row's owner rounds the total to h's dtype when `half`
        # (the projection's output), then stores h[t, n] = float32(h[t, n]) + total.
        pass

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
    # TODO(day 54): validate with _rows / _check_block (the norm weight: [in] of h's dtype; gated:
    # an even number of rows; rope: positions int32 [T], inv_freq fp32 [hd2], heads * 2 * hd2 <= rows,
    # rows a multiple of 2 * hd2, not with gated). out = torch.empty(T, N), N = rows (gated: rows // 2);
    # T or N == 0 needs no launch, K == 0 gives zeros. Launch NORM_GEMV[_wide(h, w), epilogue]
    # ("plain", "gated" or "rotary") on the grid (min(item groups, sm_count(h.device) *
    # BLOCKS_PER_SM), T) with shared_bytes for 8 * C fp32 values and the arguments h, norm_weight,
    # w, out, K, eps, half, positions, inv_freq, rot_rows = heads * 2 * hd2, hd2 (without rope pass
    # norm_weight for both arrays, 0 and 1: unused).
    raise NotImplementedError("Day 54: norm_linear is not written yet -- edit days/day_54/fused_linear.py "
                              "(lesson: notes/day_54_fusion.md)")


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
    # TODO(day 54): validate (h [T, out] of x's dtype, contiguous; block_size and warps_per_row as
    # day 11); nothing to launch when T, N or K is 0. Pick warps_per_row as day 11 does when it is
    # None, then launch (rows' blocks, T) x block_size with gemv_add_wide / gemv_add_any.
    raise NotImplementedError("Day 54: linear_add is not written yet -- edit days/day_54/fused_linear.py "
                              "(lesson: notes/day_54_fusion.md)")
