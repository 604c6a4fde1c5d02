"""Day 27 -- flash-decoding: decode attention split over chunks of the KV cache.

Lesson: notes/day_27_flash_decoding.md        Check: pytest checkers/day_27

Day 20 ran one block per query head: 9 blocks for SmolLM2 on a GPU with 132 SMs, each block
walking the whole cache alone. Here the keys are cut into `splits` chunks and every
(chunk, KV head) pair gets its own block, which computes a *partial* softmax (its max m, its
sum l, its unnormalized output acc) for all the query heads of its group; a second, small kernel
merges the partials per query head with the online-softmax rule (day 24).

Inside a block, a team of `lanes` threads owns one key at a time (each lane 8 values of the head
dim: one 16-byte load of fp16) and keeps a running (m, l, acc) per query head in registers, so a
block's work follows the live length: a chunk of 16 keys is one step, whatever the cache size.
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

from shared.runtime.vector_loads import load8, load8_wide, shfl_xor

WARP = 32
MAX_BLOCK = 1024
MAX_HEAD_DIM = 8 * WARP     # a key's team is at most a warp: 8 values per lane
SHARED_FLOATS = 12 * 1024   # 48 KiB of dynamic shared memory per block: the default limit
SIM_SMS = 4                 # the simulator has no SMs; a small number keeps its grids small
NEG_INF = np.float32(-np.inf)


@cuda.jit(device=True)
def rescale(m_old, m_new):
    """exp(m_old - m_new): the factor that moves a sum kept relative to m_old onto m_new. An empty
    state (m_old = -inf, l = 0) gets 0, also when m_new is -inf too (exp(-inf + inf) is NaN)."""
    return math.exp(m_old - m_new) if m_old != NEG_INF else float32(0.0)


def lanes_per_key(hd: int) -> int:
    """Threads that share one key: 8 values of the head dim each, a power of two (shuffles)."""
    lanes = 1
    while 8 * lanes < hd:
        lanes *= 2
    return lanes


# ---- the exercise ---------------------------------------------------------------------------------
def make_split_kernel(load, group):
    """The split kernel for `group` query heads per KV head, reading 8 values at a time with `load`
    (load8_wide: one 16-byte load, rows 16-byte aligned; load8: any alignment). `group` is a
    compile-time constant here so that the per-head state lives in registers (constant indices)."""
    GQ = 8 * group

    @cuda.jit
    def split_kernel(q, k, v, cache_len, m_out, l_out, acc_out, chunk, max_seq, lanes, scale):
        """Block (split s, KV head kvh): keys [s * chunk, min((s + 1) * chunk, n)) for the `group`
        query heads kvh * group ... that read this KV head. k, v are the caches viewed as
        [KV * max_seq, hd]. Writes m_out[s, h], l_out[s, h] and acc_out[s, h, :] (fp32, relative to
        m). A split that starts at or past n writes nothing: the merge reads only splits < cdiv(n, chunk).

        Team t = tid // lanes takes keys t, t + teams, ... of the chunk; lane tid % lanes holds
        dims d0 .. d0 + 7 of q, k, v and acc. Dynamic shared memory (fp32), one state per team:
        [ m (teams * group) | l (teams * group) | acc (teams * group * hd) ].
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
            return
        count = end - start
        row0 = kvh * max_seq + start              # k[row0 + j] is key start + j of this KV head
        team = tid // lanes
        teams = nthreads // lanes
        d0 = (tid % lanes) * 8
        full = d0 + 8 <= hd

        # registers: this lane's slice of q (scaled) and of the running state, per query head
        qr = cuda.local.array(GQ, float32)
        acc = cuda.local.array(GQ, float32)
        m = cuda.local.array(group, float32)
        l = cuda.local.array(group, float32)
        kr = cuda.local.array(8, float32)
        vr = cuda.local.array(8, float32)
        for hh in range(group):
            m[hh] = NEG_INF
            l[hh] = float32(0.0)
            for i in range(8):
                qr[hh * 8 + i] = float32(q[h0 + hh, d0 + i]) * scale if d0 + i < hd else float32(0.0)
                acc[hh * 8 + i] = float32(0.0)
        for i in range(8):
            kr[i] = float32(0.0)
            vr[i] = float32(0.0)

        # 1. every team walks its keys with an online softmax. The step count is the same for the
        #    whole block: a team past the end still takes part in its warp's shuffles.
        steps = (count + teams - 1) // teams
        for step in range(steps):
            j = step * teams + team
            valid = j < count
            if valid:                             # K and V of the key are both in flight at once
                row = row0 + j
                if full:
                    k8 = load(k, row, d0)
                    v8 = load(v, row, d0)
                    for i in range(8):
                        kr[i] = k8[i]
                        vr[i] = v8[i]
                else:                             # a head dim that is not a multiple of 8
                    for i in range(8):
                        kr[i] = float32(k[row, d0 + i]) if d0 + i < hd else float32(0.0)
                        vr[i] = float32(v[row, d0 + i]) if d0 + i < hd else float32(0.0)
            for hh in range(group):
                x = float32(0.0)
                for i in range(8):
                    x += qr[hh * 8 + i] * kr[i]
                mask = lanes // 2                 # butterfly: every lane of the team gets the dot
                while mask > 0:
                    x += shfl_xor(x, mask)
                    mask //= 2
                if valid:
                    mn = max(m[hh], x)
                    c = rescale(m[hh], mn)        # the old state moves onto the new max
                    p = math.exp(x - mn)
                    l[hh] = l[hh] * c + p
                    for i in range(8):
                        acc[hh * 8 + i] = acc[hh * 8 + i] * c + p * vr[i]
                    m[hh] = mn

        # 2. the teams merge through shared memory: each writes its state, one barrier, then
        #    thread (head, d) combines the teams' states with the same rule as the merge kernel
        smem = cuda.shared.array(0, float32)
        base_l = teams * group
        base_acc = 2 * teams * group
        for hh in range(group):
            t = team * group + hh
            if d0 == 0:
                smem[t] = m[hh]
                smem[base_l + t] = l[hh]
            for i in range(8):
                if d0 + i < hd:
                    smem[base_acc + t * hd + d0 + i] = acc[hh * 8 + i]
        cuda.syncthreads()                        # every team's state is in place
        for idx in range(tid, group * hd, nthreads):
            hh = idx // hd
            d = idx % hd
            big = NEG_INF
            for t in range(teams):
                big = max(big, smem[t * group + hh])
            total = float32(0.0)
            a = float32(0.0)
            for t in range(teams):
                f = rescale(smem[t * group + hh], big)   # a team that saw no key has weight 0
                total += f * smem[base_l + t * group + hh]
                a += f * smem[base_acc + (t * group + hh) * hd + d]
            acc_out[s, h0 + hh, d] = a
            if d == 0:
                m_out[s, h0 + hh] = big
                l_out[s, h0 + hh] = total

    return split_kernel


_KERNELS: dict = {}


def split_kernel_for(wide: bool, group: int):
    """The split kernel for this group size and load (compiled once per pair, then cached)."""
    if (wide, group) not in _KERNELS:
        _KERNELS[wide, group] = make_split_kernel(load8_wide if wide else load8, group)
    return _KERNELS[wide, group]


@cuda.jit
def merge_kernel(m_in, l_in, acc_in, cache_len, chunk, max_seq, out):
    """One block per query head h: out[h] = sum_s w_s acc_s / sum_s w_s l_s with w_s = exp(m_s - M),
    M = max_s m_s (the online-softmax rule, across blocks), over the live splits s < cdiv(n, chunk)
    only (the others hold no key and wrote nothing). Thread (g, d) merges splits g, g + groups, ...
    for dim d with a running max; the groups meet in shared memory:
    [ m (groups) | l (groups) | acc (groups * hd) ]. No key at all (n = 0) gives zeros."""
    h = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    splits = m_in.shape[0]
    hd = out.shape[1]
    n = min(cache_len[0], max_seq)
    live = min(splits, (n + chunk - 1) // chunk)
    if hd <= nthreads:
        groups, g, d0, dstep = nthreads // hd, tid // hd, tid % hd, hd
    else:
        groups, g, d0, dstep = 1, 0, tid, nthreads
    smem = cuda.shared.array(0, float32)
    if g < groups:
        for d in range(d0, hd, dstep):
            big = NEG_INF
            total = float32(0.0)
            a = float32(0.0)
            for s in range(g, live, groups):
                ms = m_in[s, h]
                mn = max(big, ms)
                c = rescale(big, mn)              # what we have so far moves onto the new max
                w = math.exp(ms - mn)             # split s moves from its own max onto it
                total = total * c + w * l_in[s, h]
                a = a * c + w * acc_in[s, h, d]
                big = mn
            if groups == 1:
                out[h, d] = a / total if total > 0 else float32(0.0)
            else:
                smem[2 * groups + g * hd + d] = a
                if d == 0:
                    smem[g] = big
                    smem[groups + g] = total
    cuda.syncthreads()                        # every group's state is in place
    if groups > 1 and tid < hd:
        big = NEG_INF
        for gg in range(groups):
            big = max(big, smem[gg])
        total = float32(0.0)
        a = float32(0.0)
        for gg in range(groups):
            f = rescale(smem[gg], big)
            total += f * smem[groups + gg]
            a += f * smem[2 * groups + gg * hd + tid]
        out[h, tid] = a / total if total > 0 else float32(0.0)


_SMS: dict = {}


def sm_count(device) -> int:
    """How many SMs the GPU has (cached per device): the split count is sized to fill them."""
    if gpu.SIM:
        return SIM_SMS
    index = torch.device(device).index or 0
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def shared_floats(group: int, hd: int, lanes: int, block_size: int) -> int:
    """The split kernel's dynamic shared memory, in fp32 values: one (m, l, acc) state per team and head."""
    return (block_size // lanes) * group * (hd + 2)


def merge_floats(hd: int, merge_block: int) -> int:
    """The merge kernel's dynamic shared memory, in fp32 values: one (m, l, acc) state per group."""
    groups = max(merge_block // hd, 1)
    return groups * (hd + 2)


def pick_splits(max_seq: int, KV: int, lanes: int, block_size: int, sms: int) -> int:
    """From shapes and the SM count only -- never from cache_len's value, so that one captured
    launch is right at every length. About two blocks per SM over a full cache, but no chunk
    shorter than one step of the block (block_size // lanes keys): a short context then fills
    few splits, each done in one step, and the merge reads only those."""
    return max(min(gpu.cdiv(2 * sms, KV), gpu.cdiv(max_seq, block_size // lanes)), 1)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_len: torch.Tensor, *, splits: int = 0, block_size: int = 128,
                     merge_block: int = 256) -> torch.Tensor:
    """Attention of one new token: q [H, hd] over the first cache_len[0] positions of [KV, max_seq, hd].

    splits: how many chunks the cache is cut into, 1..max_seq (0: pick_splits, from shapes and
    the GPU). block_size: threads per split block; merge_block: threads per merge block (powers
    of two in 32..1024). H a multiple of KV, hd at most 256, float32/float16 only. cache_len (int32 [1] on the device) is read only inside the kernels.
    Returns [H, hd] in q's dtype.
    """
    if q.dim() != 2 or k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"decode_attention: q must be [H, hd] and both caches [KV, max_seq, hd], got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    H, hd = q.shape
    KV, max_seq, cache_hd = k_cache.shape
    if cache_hd != hd or KV == 0 or H % KV or hd == 0 or max_seq == 0:
        raise ValueError(f"decode_attention: q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}: "
                         "head_dim must match and H must be a multiple of KV")
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"decode_attention: head_dim {hd} > {MAX_HEAD_DIM} (a warp of lanes, 8 values each)")
    if not isinstance(cache_len, torch.Tensor) or cache_len.numel() != 1 or cache_len.dtype != torch.int32:
        raise ValueError("decode_attention: cache_len must be an int32 tensor [1] on the device "
                         "(torch.tensor([n], dtype=torch.int32, device=...)), not a Python int")
    for name, b in (("block_size", block_size), ("merge_block", merge_block)):
        if b < WARP or b > MAX_BLOCK or b & (b - 1):
            raise ValueError(f"{name} must be a power of two in {WARP}..{MAX_BLOCK}, got {b}")
    for t in (q, k_cache, v_cache):
        if t.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"decode_attention works on float32/float16, got {t.dtype}")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache and v_cache dtypes differ ({k_cache.dtype}, {v_cache.dtype})")
    group = H // KV
    lanes = lanes_per_key(hd)
    if splits == 0:
        splits = pick_splits(max_seq, KV, lanes, block_size, sm_count(q.device))
    if not 1 <= splits <= max_seq:
        raise ValueError(f"splits must be in 1..max_seq={max_seq} (or 0 for automatic), got {splits}")
    chunk = gpu.cdiv(max_seq, splits)
    need = shared_floats(group, hd, lanes, block_size)
    if need > SHARED_FLOATS:
        raise ValueError(f"decode_attention: {group} query heads per KV head with head_dim {hd} need "
                         f"{4 * need} bytes of shared memory at block_size={block_size} (> {4 * SHARED_FLOATS}): "
                         "use a smaller block_size")
    gpu.require_device(q, k_cache, v_cache, cache_len)

    k2 = k_cache.reshape(KV * max_seq, hd)          # a view for a contiguous cache (the engine's)
    v2 = v_cache.reshape(KV * max_seq, hd)
    wide = (hd % 8 == 0 and k2.is_contiguous() and v2.is_contiguous() and k2.data_ptr() % 16 == 0
            and v2.data_ptr() % 16 == 0)
    m = torch.empty((splits, H), dtype=torch.float32, device=q.device)
    l = torch.empty((splits, H), dtype=torch.float32, device=q.device)
    acc = torch.empty((splits, H, hd), dtype=torch.float32, device=q.device)
    out = torch.empty((H, hd), dtype=q.dtype, device=q.device)
    n = cache_len.reshape(1)
    gpu.launch(split_kernel_for(wide, group), (splits, KV), block_size, q, k2, v2, n, m, l, acc, chunk, max_seq,
               lanes, np.float32(1.0 / math.sqrt(hd)), shared_bytes=4 * need)
    gpu.launch(merge_kernel, H, merge_block, m, l, acc, n, chunk, max_seq, out,
               shared_bytes=4 * merge_floats(hd, merge_block))
    return out
