"""Day 30 -- paged decode attention: day 27's split-KV kernel, reading keys through block tables.

Lesson: notes/day_30_paged_decode.md        Check: pytest checkers/day_30

The KV cache is a pool of fixed-size blocks [num_blocks, KV, block_size, hd] shared by every
sequence (days 28 and 29). Sequence b's position p lives in block block_tables[b, p // block_size]
at offset p % block_size. Everything else is day 27: blocks (split, KV head, sequence) compute
partial softmaxes over chunks of keys, a merge kernel combines them per (head, sequence).
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, int32

from shared.runtime.vector_loads import load8, load8_wide

MAX_BLOCK = 1024
SHARED_FLOATS = 12 * 1024   # 48 KiB of dynamic shared memory per block: the default limit
SIM_SMS = 4                 # the simulator has no SMs; a small number keeps its grids small


# ---- given: day 27's reduction and merge, with a batch dimension -------------------------------
@cuda.jit(device=True)
def tree_reduce(smem, base, group, is_max):
    """For each of `group` rows of blockDim values at smem[base + row * blockDim + tid]: row's max
    (is_max) or sum ends up at the row's first element. blockDim must be a power of two; every
    thread must call this (it has barriers); it starts and ends with one."""
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    cuda.syncthreads()                       # every thread's value is in place
    stride = nthreads // 2
    while stride > 0:
        if tid < stride:
            for r in range(group):
                a = base + r * nthreads + tid
                if is_max:
                    smem[a] = max(smem[a], smem[a + stride])
                else:
                    smem[a] += smem[a + stride]
        cuda.syncthreads()
        stride //= 2


@cuda.jit
def merge_kernel(m_in, l_in, acc_in, out):
    """Block (query head h, sequence b): out[b, h] = sum_s w_s acc_s / sum_s w_s l_s with
    w_s = exp(m_s - M), M = max_s m_s (day 27's merge). Empty splits (l = 0) are skipped; a
    sequence with no keys at all gets zeros. Dynamic shared memory: [ w (splits) | rows (blockDim) ]."""
    h = cuda.blockIdx.x
    b = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    splits = m_in.shape[1]
    hd = out.shape[2]
    smem = cuda.shared.array(0, float32)
    red = splits

    mx = float32(-math.inf)
    for s in range(tid, splits, nthreads):
        mx = max(mx, m_in[b, s, h])
    smem[red + tid] = mx
    tree_reduce(smem, red, 1, True)
    big = smem[red]
    cuda.syncthreads()                        # everyone has M before the row is reused
    total = float32(0.0)
    for s in range(tid, splits, nthreads):
        w = float32(0.0)
        ls = l_in[b, s, h]
        if ls > 0:
            w = math.exp(m_in[b, s, h] - big)
        smem[s] = w
        total += ls * w
    smem[red + tid] = total
    tree_reduce(smem, red, 1, False)          # its barriers also publish every w
    total = smem[red]
    inv = float32(1.0) / total if total > 0 else float32(0.0)
    cuda.syncthreads()                        # everyone has the sum before the row is reused

    if hd <= nthreads:
        groups, g, d0, dstep = nthreads // hd, tid // hd, tid % hd, hd
    else:
        groups, g, d0, dstep = 1, 0, tid, nthreads
    if g < groups:
        for d in range(d0, hd, dstep):
            part = float32(0.0)
            for s in range(g, splits, groups):
                w = smem[s]
                if w > 0:
                    part += w * acc_in[b, s, h, d]
            if groups == 1:
                out[b, h, d] = part * inv
            else:
                smem[red + tid] = part
    cuda.syncthreads()                        # every copy's partial sum is in place
    if groups > 1 and tid < hd:
        part = float32(0.0)
        for c in range(groups):
            part += smem[red + c * hd + tid]
        out[b, h, tid] = part * inv


# ---- the exercise: the split kernel through the block table -------------------------------------
def make_split_kernel(load):
    """The paged split kernel, reading K 8 values at a time with `load` (load8_wide: one 16-byte
    load, rows 16-byte aligned; load8: any alignment)."""

    @cuda.jit(device=True)
    def pool_row(block_tables, b, p, kvh, KV, bs):
        """The row of the pool (viewed as [num_blocks * KV * block_size, hd]) that holds position p
        of sequence b, KV head kvh: block block_tables[b, p // bs], offset p % bs."""
        # TODO(day 30): the block id from sequence b's table row, then its row in the pool
        # [num_blocks, KV, bs, hd] viewed as rows of hd values.
        return 0

    @cuda.jit
    def split_kernel(q, k, v, block_tables, context_lens, m_out, l_out, acc_out, group, chunk, bs, KV, scale):
        """Block (split s, KV head kvh, sequence b): positions [s * chunk, min((s + 1) * chunk, n))
        of sequence b, n = context_lens[b], for the `group` query heads of KV head kvh. chunk is a
        multiple of bs, so a split starts on a block boundary. Table entries past the last
        valid position are never read. Writes m_out[b, s, h], l_out[b, s, h], acc_out[b, s, h, :].

        Dynamic shared memory (fp32 unless said): [ q of the group (group * hd) | scores
        (group * chunk) | reduction rows (max(2 * group * blockDim, 8 * blockDim)) | int32 pool row
        of each position of the chunk (chunk) ].
        """
        # TODO(day 30): day 27's split kernel with a third grid dimension b (the sequence):
        # n = min(context_lens[b], max_blocks * bs); an empty split writes m = -inf, l = 0 and
        # returns. Step 1 finds each position's pool row with pool_row(...) (never for a
        # position >= n: table entries past it are garbage) and keeps it in the int32 view of
        # shared memory for step 3's V reads. Write m_out[b, s, h], l_out[b, s, h], acc_out[b, s, h, :].
        pass

    return split_kernel


split_wide = make_split_kernel(load8_wide)   # pool rows start on 16-byte boundaries
split_any = make_split_kernel(load8)         # any alignment


_SMS: dict = {}


def sm_count(device) -> int:
    """How many SMs the GPU has (cached per device)."""
    if gpu.SIM:
        return SIM_SMS
    index = torch.device(device).index or 0
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def shared_floats(group: int, hd: int, chunk: int, block_size: int) -> int:
    """The split kernel's dynamic shared memory, in 4-byte values: day 27's, plus a pool row per
    position of the chunk."""
    return group * (hd + chunk) + max(2 * group * block_size, 8 * block_size) + chunk


def pick_splits(max_blocks: int, B: int, KV: int, group: int, hd: int, kv_block: int, block_size: int,
                sms: int) -> int:
    """Splits over a table of max_blocks KV blocks, from shapes and the SM count only: about two
    thread blocks per SM with all B sequences full, at least block_size positions per chunk, few
    enough that a chunk's scores fit in shared memory. Chunks are whole KV blocks, so the count
    is rounded to one that divides the table into equal whole-block chunks."""
    want = min(gpu.cdiv(2 * sms, B * KV), gpu.cdiv(max_blocks * kv_block, block_size))
    cap = (SHARED_FLOATS - shared_floats(group, hd, 0, block_size)) // (group + 1) // kv_block   # KV blocks per chunk
    per_chunk = max(min(gpu.cdiv(max_blocks, max(want, 1)), cap), 1)
    return gpu.cdiv(max_blocks, per_chunk)


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, *, splits: int = 0,
                           block_size: int = 128, merge_block: int = 256) -> torch.Tensor:
    """One new query per sequence and head over that sequence's paged cache.

    q [B, H, hd]; pools [num_blocks, KV, kv_block, hd]; block_tables int32 [B, max_blocks];
    context_lens int32 [B] (0 gives zeros). Both are read only inside the kernels.
    splits: chunks per sequence (0: pick_splits; a chunk is cdiv(max_blocks, splits) whole KV
    blocks); block_size, merge_block: threads per block (powers of two). Returns [B, H, hd].
    """
    # TODO(day 30): validate (q [B, H, hd], pools [num_blocks, KV, kv_block, hd] of one shape and
    # dtype, int32 block_tables [B, max_blocks] and context_lens [B], the knobs as day 27) with
    # one-line ValueErrors; splits = pick_splits(...) when 0; chunk = cdiv(max_blocks, splits)
    # whole KV blocks; view the pools as [num_blocks * KV * kv_block, hd]; m, l [B, splits, H],
    # acc [B, splits, H, hd] fp32; launch split_wide/split_any on (splits, KV, B) and the given
    # merge_kernel on (H, B).
    raise NotImplementedError("Day 30: paged_decode_attention is not written yet -- edit days/day_30/paged_decode.py "
                              "(lesson: notes/day_30_paged_decode.md)")
