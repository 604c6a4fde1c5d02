"""Day 54 -- the RMSNorm and the residual add folded into the decode GEMV.

At decode a small kernel costs a few microseconds whatever its bytes, and add_rmsnorm is one
of those per sub-block. The norm and the add both touch a single row of `hidden` values, so
the GEMVs on either side can do them as a prologue and an epilogue:
- norm_linear(h, norm_weight, eps, w) = rmsnorm(h) @ w.T. Every block first normalizes the row
  h (a few KB, from L2) into shared memory, then its warps take rows of w as day 11's GEMV does,
  reading x from shared memory. A block loops over many rows, so the prologue is paid a few
  hundred times per matrix, not once per row.
- linear_add(x, w, h): h += x @ w.T in place. Day 11's GEMV whose row owner adds its sum to h[n].

Lesson: notes/day_54_fusion.md ("Folding the norm and the add into the GEMV")
Check: pytest checkers/day_54
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32
from numba.core.types import float16

from shared.runtime.vector_loads import load8, load8_wide, shfl_down

WARP = 32
VEC = 8               # each lane takes 8 consecutive k per step (16 bytes of fp16)
MAX_WARPS = 32        # scratch: one value per warp of the largest block (1024 threads)
BUSY_WARPS = 4096     # linear_add: split short matrices' rows over more warps until about this many run
BLOCKS_PER_SM = 8     # norm_linear: enough resident blocks to keep memory busy; each loops over rows
SIM_SMS = 2           # the simulator: pretend 2 SMs, so blocks do loop over several groups of rows


def make_norm_gemv(load):
    """norm_linear's kernel, reading 8 values at a time with `load` (load8_wide or load8)."""

    @cuda.jit
    def norm_gemv_kernel(h, norm_w, w, out, K, eps, half):
        """out[t, n] = sum_k rmsnorm(h[t])[k] * w[n, k] for token t = blockIdx.y; a warp per row n.

        Shared memory holds the normalized row transposed by 8: xs[j * C + c] = x[8 * c + j], so
        a lane reading its chunk c for j = 0..7 and its neighbours reading c + 1, ... hit
        consecutive words (no bank conflicts)."""
        xs = cuda.shared.array(0, float32)          # 8 * C floats (dynamic: the launch sizes it)
        red = cuda.shared.array(MAX_WARPS, float32)
        # TODO(day 54): t = blockIdx.y; C = ceil(K / 8) chunks, body = K // 8 whole ones.
        # 1. prologue: each thread loads chunks c = tid, tid + blockDim.x, ... of h[t] with `load`,
        #    stores value j at xs[j * C + c] and adds its square to an fp32 acc; then the last K % 8
        #    values one each (same index rule). Sum acc over the warp (shfl_down), lane 0 writes
        #    red[warp], cuda.syncthreads(), and every thread adds up red[0 .. warps-1] itself.
        # 2. inv_rms = 1 / sqrt(total / K + eps); scale every xs entry in place with day 10's
        #    rounding: normed = x * inv_rms (rounded to fp16 if `half`), then norm_w[k] * normed
        #    (rounded again if `half`). cuda.syncthreads() before anyone reads xs.
        # 3. the GEMV, a warp per row: group = blockIdx.x; while group * warps < N: row
        #    n = group * warps + warp; lanes take chunks c = lane, lane + 32, ... of w[n] (two loads
        #    in flight), x from xs; the tail one value each; shfl_down; lane 0 writes out[t, n];
        #    group += gridDim.x. Rows past N still shuffle (the simulator's shuffles are barriers).
        pass

    return norm_gemv_kernel


norm_gemv_wide = make_norm_gemv(load8_wide)   # rows of h and w start on 16-byte boundaries
norm_gemv_any = make_norm_gemv(load8)


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
                block_size: int = 256) -> torch.Tensor:
    """rmsnorm(h, norm_weight, eps) @ w.T -> [T, out] in h's dtype, with day 10's rounding.

    h [T, in], norm_weight [in], w [out, in], one dtype (fp16 or fp32). Every block normalizes
    its token's row into shared memory, then a warp per row of w computes the dot products.
    It reads w once per token: meant for decode (T == 1); the forward keeps the tiled GEMM for
    prefill. Raise ValueError (one line) for shapes or dtypes that do not fit, a norm_weight
    that is not [in], or a block_size that is not a power of two from 32 to 1024.
    """
    # TODO(day 54): validate with _rows / _check_block (and the norm weight: [in], h's dtype);
    # out = torch.empty(T, N); T, N or K == 0 need no launch (K == 0: zeros). Launch grid
    # (min(row groups, sm_count(h.device) * BLOCKS_PER_SM), T) with shared_bytes for 8 * C fp32
    # values, norm_gemv_wide when _wide(h, w) else norm_gemv_any; half = h.dtype == torch.float16.
    raise NotImplementedError("Day 54: norm_linear is not written yet -- edit days/day_54/fused_linear.py "
                              "(lesson: notes/day_54_fusion.md)")


def linear_add(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, *, block_size: int = 128,
               warps_per_row: int | None = None) -> None:
    """h += x @ w.T IN PLACE: the residual add as the GEMV's last line.

    x [T, in], w [out, in], h [T, out], one dtype (fp16 or fp32). The product is rounded to
    h's dtype, then added to h and rounded again, as HF's `h = h + o_proj(a)`. Raise ValueError
    (one line) for shapes or dtypes that do not fit, an h that is not contiguous (the update
    must land in h itself), or a bad block_size / warps_per_row (powers of two, as day 11).
    """
    # TODO(day 54): validate (h [T, out] of x's dtype, contiguous; block_size and warps_per_row as
    # day 11); nothing to launch when T, N or K is 0. Pick warps_per_row as day 11 does when it is
    # None, then launch (rows' blocks, T) x block_size with gemv_add_wide / gemv_add_any.
    raise NotImplementedError("Day 54: linear_add is not written yet -- edit days/day_54/fused_linear.py "
                              "(lesson: notes/day_54_fusion.md)")
