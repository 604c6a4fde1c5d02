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
        blk = block_tables[b, p // bs]
        return (blk * KV + kvh) * bs + p % bs

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
        s = cuda.blockIdx.x
        kvh = cuda.blockIdx.y
        b = cuda.blockIdx.z
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        hd = q.shape[2]
        h0 = kvh * group
        n = min(context_lens[b], block_tables.shape[1] * bs)   # read on the device
        start = s * chunk
        end = min(start + chunk, n)
        if start >= end:                          # the whole block leaves here: no barrier is skipped
            for hh in range(tid, group, nthreads):
                m_out[b, s, h0 + hh] = float32(-math.inf)
                l_out[b, s, h0 + hh] = float32(0.0)
            return
        count = end - start

        smem = cuda.shared.array(0, float32)
        ismem = cuda.shared.array(0, int32)       # the same memory, seen as int32
        sc = group * hd
        red = sc + group * chunk
        red2 = red + group * nthreads
        rows = red + max(2 * group * nthreads, 8 * nthreads)
        for i in range(tid, group * hd, nthreads):
            smem[i] = float32(q[b, h0 + i // hd, i % hd]) * scale
        cuda.syncthreads()                        # q of the whole group is staged

        # 1. scores: one position per thread, its K row found through the block table (and kept
        #    in shared memory: V is in the same row of its pool)
        body = hd - hd % 8
        for j in range(tid, count, nthreads):
            row = pool_row(block_tables, b, start + j, kvh, KV, bs)
            ismem[rows + j] = row
            for hh in range(group):
                qb = hh * hd
                acc = float32(0.0)
                for d in range(0, body, 8):
                    kv8 = load(k, row, d)
                    for i in range(8):
                        acc += smem[qb + d + i] * kv8[i]
                for d in range(body, hd):
                    acc += smem[qb + d] * float32(k[row, d])
                smem[sc + hh * chunk + j] = acc

        # 2. per head: max, exp(s - max), sum
        for hh in range(group):
            mx = float32(-math.inf)
            for j in range(tid, count, nthreads):
                mx = max(mx, smem[sc + hh * chunk + j])
            smem[red + hh * nthreads + tid] = mx
        tree_reduce(smem, red, group, True)
        for hh in range(group):
            mh = smem[red + hh * nthreads]
            total = float32(0.0)
            for j in range(tid, count, nthreads):
                e = math.exp(smem[sc + hh * chunk + j] - mh)
                smem[sc + hh * chunk + j] = e
                total += e
            smem[red2 + hh * nthreads + tid] = total
        tree_reduce(smem, red2, group, False)     # its barriers also publish every exp score
        for hh in range(tid, group, nthreads):
            m_out[b, s, h0 + hh] = smem[red + hh * nthreads]
            l_out[b, s, h0 + hh] = smem[red2 + hh * nthreads]
        cuda.syncthreads()                        # m and l are read before the rows are reused

        # 3. acc[hh, d] = sum_j e_j v_j[d] (the rows found in step 1). R threads
        #    cover one V row, 8 consecutive values each (one 16-byte load of fp16); the block holds
        #    `copies` such teams, team c takes keys c, c + copies, ... A warp reads whole rows.
        R = (hd + 7) // 8
        copies = nthreads // R
        c, d0 = tid // R, (tid % R) * 8
        a = cuda.local.array(8, float32)          # constant indices only: it lives in registers
        for hh in range(group):
            for i in range(8):
                a[i] = float32(0.0)
            if c < copies:
                for j in range(c, count, copies):
                    e = smem[sc + hh * chunk + j]
                    row = ismem[rows + j]
                    if d0 + 8 <= hd:
                        v8 = load(v, row, d0)
                        for i in range(8):
                            a[i] += e * v8[i]
                    else:                         # the last team of a head dim that is not a multiple of 8
                        for i in range(8):
                            if d0 + i < hd:
                                a[i] += e * float32(v[row, d0 + i])
                for i in range(8):
                    if d0 + i < hd:
                        smem[red + c * hd + d0 + i] = a[i]
            cuda.syncthreads()                    # every team's partial sums for head hh are in place
            for d in range(tid, hd, nthreads):
                total = float32(0.0)
                for t in range(copies):
                    total += smem[red + t * hd + d]
                acc_out[b, s, h0 + hh, d] = total
            cuda.syncthreads()                    # read before the next head overwrites them

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
    if q.dim() != 3 or k_pool.dim() != 4 or k_pool.shape != v_pool.shape:
        raise ValueError(f"paged_decode_attention: q must be [B, H, hd] and both pools [num_blocks, KV, "
                         f"block_size, hd], got {tuple(q.shape)}, {tuple(k_pool.shape)}, {tuple(v_pool.shape)}")
    B, H, hd = q.shape
    num_blocks, KV, kv_block, pool_hd = k_pool.shape
    if pool_hd != hd or KV == 0 or H % KV or hd == 0 or kv_block == 0:
        raise ValueError(f"paged_decode_attention: q {tuple(q.shape)} does not fit pools {tuple(k_pool.shape)}: "
                         "head_dim must match and H must be a multiple of KV")
    for name, t, shape in (("block_tables", block_tables, (B, None)), ("context_lens", context_lens, (B,))):
        if (not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != len(shape)
                or t.shape[0] != B):
            raise ValueError(f"paged_decode_attention: {name} must be an int32 tensor of shape "
                             f"{'[B, max_blocks]' if len(shape) == 2 else '[B]'} on the device with B={B}, "
                             f"got {getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    max_blocks = block_tables.shape[1]
    for name, b in (("block_size", block_size), ("merge_block", merge_block)):
        if b < 32 or b > MAX_BLOCK or b & (b - 1):
            raise ValueError(f"{name} must be a power of two in 32..{MAX_BLOCK}, got {b}")
    for t in (q, k_pool, v_pool):
        if t.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"paged_decode_attention works on float32/float16, got {t.dtype}")
    if k_pool.dtype != v_pool.dtype:
        raise ValueError(f"k_pool and v_pool dtypes differ ({k_pool.dtype}, {v_pool.dtype})")
    gpu.require_device(q, k_pool, v_pool, block_tables, context_lens)
    out = torch.empty((B, H, hd), dtype=q.dtype, device=q.device)
    if B == 0 or max_blocks == 0:
        return out.zero_()
    group = H // KV
    if splits == 0:
        splits = pick_splits(max_blocks, B, KV, group, hd, kv_block, block_size, sm_count(q.device))
    if not 1 <= splits <= max_blocks:
        raise ValueError(f"splits must be in 1..max_blocks={max_blocks} (or 0 for automatic), got {splits}")
    chunk = gpu.cdiv(max_blocks, splits) * kv_block       # whole KV blocks
    splits = gpu.cdiv(max_blocks * kv_block, chunk)       # no split that could never hold a key
    need = shared_floats(group, hd, chunk, block_size)
    if hd > 8 * block_size or need > SHARED_FLOATS:
        raise ValueError(f"paged_decode_attention: chunks of {chunk} positions for {group} query heads per KV "
                         f"head need {4 * need} bytes of shared memory (> {4 * SHARED_FLOATS}): use more "
                         "splits, a smaller block_size, or splits=0")
    if splits + merge_block > SHARED_FLOATS:
        raise ValueError(f"paged_decode_attention: {splits} splits is too many for the merge's shared memory")

    k2 = k_pool.reshape(num_blocks * KV * kv_block, hd)   # a view for a contiguous pool
    v2 = v_pool.reshape(num_blocks * KV * kv_block, hd)
    wide = hd % 8 == 0 and k2.is_contiguous() and k2.data_ptr() % 16 == 0
    m = torch.empty((B, splits, H), dtype=torch.float32, device=q.device)
    l = torch.empty((B, splits, H), dtype=torch.float32, device=q.device)
    acc = torch.empty((B, splits, H, hd), dtype=torch.float32, device=q.device)
    gpu.launch(split_wide if wide else split_any, (splits, KV, B), block_size, q.contiguous(), k2, v2,
               block_tables.contiguous(), context_lens.contiguous(), m, l, acc, group, chunk, kv_block, KV,
               np.float32(1.0 / math.sqrt(hd)), shared_bytes=4 * need)
    gpu.launch(merge_kernel, (H, B), merge_block, m, l, acc, out, shared_bytes=4 * (splits + merge_block))
    return out
