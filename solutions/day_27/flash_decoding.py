"""Day 27 -- flash-decoding: decode attention split over chunks of the KV cache.

Lesson: notes/day_27_flash_decoding.md        Check: pytest checkers/day_27

Day 20 ran one block per query head: 9 blocks for SmolLM2 on a GPU with 132 SMs, each block
walking the whole cache alone. Here the keys are cut into `splits` chunks and every
(chunk, KV head) pair gets its own block, which computes a *partial* softmax (its max m, its
sum l, its unnormalized output acc) for all the query heads of its group; a second, small kernel
merges the partials per query head with the online-softmax rule (day 24).
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

from shared.runtime.vector_loads import load8, load8_wide

MAX_BLOCK = 1024
SHARED_FLOATS = 12 * 1024   # 48 KiB of dynamic shared memory per block: the default limit
SIM_SMS = 4                 # the simulator has no SMs; a small number keeps its grids small


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


def make_split_kernel(load):
    """The split kernel, reading K 8 values at a time with `load` (load8_wide: one 16-byte load,
    rows 16-byte aligned; load8: any alignment). Numba compiles each version on its own."""

    @cuda.jit
    def split_kernel(q, k, v, cache_len, m_out, l_out, acc_out, group, chunk, max_seq, scale):
        """Block (split s, KV head kvh): keys [s * chunk, min((s + 1) * chunk, n)) for the `group`
        query heads kvh * group ... that read this KV head. k, v are the caches viewed as
        [KV * max_seq, hd]. Writes m_out[s, h], l_out[s, h] and acc_out[s, h, :] (fp32, relative to
        m): an empty split (it starts at or past n) writes m = -inf, l = 0 and nothing else.

        Dynamic shared memory (fp32): [ q of the group (group * hd) | scores (group * chunk) |
        reduction rows (max(2 * group * blockDim, 8 * blockDim)) ].
        """
        s = cuda.blockIdx.x
        kvh = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        hd = q.shape[1]
        h0 = kvh * group                          # GQA: query heads h0 .. h0 + group - 1
        n = min(cache_len[0], max_seq)            # read on the device: a graph replays at any length
        start = s * chunk
        end = min(start + chunk, n)
        if start >= end:                          # the whole block leaves here: no barrier is skipped
            for hh in range(tid, group, nthreads):
                m_out[s, h0 + hh] = float32(-math.inf)
                l_out[s, h0 + hh] = float32(0.0)
            return
        count = end - start
        row0 = kvh * max_seq + start              # k[row0 + j] is key start + j of this KV head

        smem = cuda.shared.array(0, float32)
        sc = group * hd                           # scores: smem[sc + hh * chunk + j]
        red = sc + group * chunk                  # reduction rows: smem[red + hh * nthreads + tid]
        red2 = red + group * nthreads
        for i in range(tid, group * hd, nthreads):
            smem[i] = float32(q[h0 + i // hd, i % hd]) * scale
        cuda.syncthreads()                        # q of the whole group is staged

        # 1. scores: one key per thread; its K row is read once from memory (16 bytes per load),
        #    then from L1 for the group's other heads.
        body = hd - hd % 8
        for j in range(tid, count, nthreads):
            row = row0 + j
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

        # 2. per head: the max over the chunk, then exp(s - max) and its sum
        for hh in range(group):
            mx = float32(-math.inf)
            for j in range(tid, count, nthreads):
                mx = max(mx, smem[sc + hh * chunk + j])
            smem[red + hh * nthreads + tid] = mx
        tree_reduce(smem, red, group, True)       # smem[red + hh * nthreads] = max of head hh
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
            m_out[s, h0 + hh] = smem[red + hh * nthreads]
            l_out[s, h0 + hh] = smem[red2 + hh * nthreads]
        cuda.syncthreads()                        # m and l are read before the rows are reused

        # 3. acc[hh, d] = sum_j e_j v_j[d]: threads over the head dim AND the keys. R threads
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
                    row = row0 + j
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
                acc_out[s, h0 + hh, d] = total
            cuda.syncthreads()                    # read before the next head overwrites them

    return split_kernel


split_wide = make_split_kernel(load8_wide)   # K rows start on 16-byte boundaries
split_any = make_split_kernel(load8)         # any alignment


@cuda.jit
def merge_kernel(m_in, l_in, acc_in, out):
    """One block per query head h: out[h] = sum_s w_s acc_s / sum_s w_s l_s with w_s = exp(m_s - M),
    M = max_s m_s (the online-softmax rule, across blocks). Empty splits have l = 0: they are
    skipped, their acc was never written. Dynamic shared memory: [ w (splits) | rows (blockDim) ]."""
    h = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    splits = m_in.shape[0]
    hd = out.shape[1]
    smem = cuda.shared.array(0, float32)
    red = splits

    mx = float32(-math.inf)
    for s in range(tid, splits, nthreads):
        mx = max(mx, m_in[s, h])
    smem[red + tid] = mx
    tree_reduce(smem, red, 1, True)
    big = smem[red]                           # M: the largest max of any split
    cuda.syncthreads()                        # everyone has M before the row is reused
    total = float32(0.0)
    for s in range(tid, splits, nthreads):
        w = float32(0.0)
        ls = l_in[s, h]
        if ls > 0:
            w = math.exp(m_in[s, h] - big)    # rescale split s from its own max to M
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
                    part += w * acc_in[s, h, d]
            if groups == 1:
                out[h, d] = part * inv
            else:
                smem[red + tid] = part
    cuda.syncthreads()                        # every copy's partial sum is in place
    if groups > 1 and tid < hd:
        part = float32(0.0)
        for c in range(groups):
            part += smem[red + c * hd + tid]
        out[h, tid] = part * inv


_SMS: dict = {}


def sm_count(device) -> int:
    """How many SMs the GPU has (cached per device): the split count is sized to fill them."""
    if gpu.SIM:
        return SIM_SMS
    index = torch.device(device).index or 0
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def shared_floats(group: int, hd: int, chunk: int, block_size: int) -> int:
    """The split kernel's dynamic shared memory, in fp32 values: q, scores, reduction rows (a max
    and a sum row per head, or a team's partial V sums: at most 8 values per thread)."""
    return group * (hd + chunk) + max(2 * group * block_size, 8 * block_size)


def pick_splits(max_seq: int, KV: int, group: int, hd: int, block_size: int, sms: int) -> int:
    """From shapes and the SM count only -- never from cache_len's value, so that one captured
    launch is right at every length. About two blocks per SM over a full cache, at least
    block_size keys per chunk (a thread per key), and few enough keys per chunk that the
    scores fit in shared memory."""
    want = min(gpu.cdiv(2 * sms, KV), gpu.cdiv(max_seq, block_size))
    cap = (SHARED_FLOATS - shared_floats(group, hd, 0, block_size)) // group   # the longest chunk that fits
    return max(want, gpu.cdiv(max_seq, max(cap, 1)), 1)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_len: torch.Tensor, *, splits: int = 0, block_size: int = 128,
                     merge_block: int = 256) -> torch.Tensor:
    """Attention of one new token: q [H, hd] over the first cache_len[0] positions of [KV, max_seq, hd].

    splits: how many chunks the cache is cut into (0: pick_splits, from shapes and the GPU).
    block_size: threads per split block; merge_block: threads per merge block (powers of two).
    cache_len (int32 [1] on the device) is read only inside the kernels. Returns [H, hd] in q's dtype.
    """
    if q.dim() != 2 or k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"decode_attention: q must be [H, hd] and both caches [KV, max_seq, hd], got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    H, hd = q.shape
    KV, max_seq, cache_hd = k_cache.shape
    if cache_hd != hd or KV == 0 or H % KV or hd == 0 or max_seq == 0:
        raise ValueError(f"decode_attention: q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}: "
                         "head_dim must match and H must be a multiple of KV")
    if not isinstance(cache_len, torch.Tensor) or cache_len.numel() != 1 or cache_len.dtype != torch.int32:
        raise ValueError("decode_attention: cache_len must be an int32 tensor [1] on the device "
                         "(torch.tensor([n], dtype=torch.int32, device=...)), not a Python int")
    for name, b in (("block_size", block_size), ("merge_block", merge_block)):
        if b < 32 or b > MAX_BLOCK or b & (b - 1):
            raise ValueError(f"{name} must be a power of two in 32..{MAX_BLOCK}, got {b}")
    for t in (q, k_cache, v_cache):
        if t.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"decode_attention works on float32/float16, got {t.dtype}")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache and v_cache dtypes differ ({k_cache.dtype}, {v_cache.dtype})")
    group = H // KV
    if splits == 0:
        splits = pick_splits(max_seq, KV, group, hd, block_size, sm_count(q.device))
    if not 1 <= splits <= max_seq:
        raise ValueError(f"splits must be in 1..max_seq={max_seq} (or 0 for automatic), got {splits}")
    chunk = gpu.cdiv(max_seq, splits)
    need = shared_floats(group, hd, chunk, block_size)
    if hd > 8 * block_size or need > SHARED_FLOATS:
        raise ValueError(f"decode_attention: {splits} splits of {chunk} keys for {group} query heads per KV "
                         f"head need {4 * need} bytes of shared memory (> {4 * SHARED_FLOATS}): use more "
                         "splits, a smaller block_size, or splits=0")
    if splits + merge_block > SHARED_FLOATS:
        raise ValueError(f"decode_attention: {splits} splits is too many for the merge's shared memory")
    gpu.require_device(q, k_cache, v_cache, cache_len)

    k2 = k_cache.reshape(KV * max_seq, hd)          # a view for a contiguous cache (the engine's)
    v2 = v_cache.reshape(KV * max_seq, hd)
    wide = hd % 8 == 0 and k2.is_contiguous() and k2.data_ptr() % 16 == 0
    m = torch.empty((splits, H), dtype=torch.float32, device=q.device)
    l = torch.empty((splits, H), dtype=torch.float32, device=q.device)
    acc = torch.empty((splits, H, hd), dtype=torch.float32, device=q.device)
    out = torch.empty((H, hd), dtype=q.dtype, device=q.device)
    gpu.launch(split_wide if wide else split_any, (splits, KV), block_size, q, k2, v2, cache_len.reshape(1),
               m, l, acc, group, chunk, max_seq, np.float32(1.0 / math.sqrt(hd)), shared_bytes=4 * need)
    gpu.launch(merge_kernel, H, merge_block, m, l, acc, out, shared_bytes=4 * (splits + merge_block))
    return out
