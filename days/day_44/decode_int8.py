"""Day 44 -- paged decode attention over an int8 KV cache: day 30's split-KV kernel, each row
dequantized in registers.

Lesson: notes/day_44_kv_int8.md        Check: pytest checkers/day_44

Everything but the loads is day 30's (its merge kernel, split count and chunking are imported
from your day 30): blocks (split, KV head, sequence) walk their positions with an online softmax,
a team of lanes per key, 8 dims a lane. What changes is what a team reads for position p: the
int8 key and value rows at the pool row of p (day 30's pool_row) and their two fp16 scales, at
the same index of the scale pools viewed as [num_blocks * KV * block_size]. The scale is the
same for the whole row, so it multiplies once per key, not once per value:

    score = (q . k_int8) * k_scale / sqrt(hd)        acc += (p * v_scale) * v_int8

An int8 row is hd bytes, half an fp16 row: the bytes a long context's decode step reads are
mostly these rows, so they halve too (plus 2 bytes of scale per row).
"""
import functools
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

from shared.runtime.vector_loads import shfl_xor
from ..day_30.paged_decode import (MAX_BLOCK, MAX_HEAD_DIM, NEG_INF, SHARED_FLOATS, WARP, chunk_of, lanes_per_key,
                                   merge_floats, merge_kernel_for, pick_splits, rescale, shared_floats, sm_count,
                                   state_span)


@cuda.jit(device=True)
def pool_row(block_tables, b, p, kvh, KV, bs):
    """Day 30's: the row of the pool (viewed as [num_blocks * KV * block_size, hd]) that holds
    position p of sequence b, KV head kvh. The scales of that row are at the same index of the
    scale pools viewed as [num_blocks * KV * block_size]."""
    blk = block_tables[b, p // bs]
    return (blk * KV + kvh) * bs + p % bs


def make_split_kernel(group, lanes, bs, hd, nthreads):
    """Day 30's split kernel for int8 rows: the same compile-time constants, the same online
    softmax, butterfly and shared-memory merge; the rows come from the int8 pools and are scaled."""
    GQ = 8 * group
    teams = nthreads // lanes
    span = state_span(lanes)
    states = nthreads // span

    @cuda.jit
    def split_kernel(q, k, v, k_scale, v_scale, block_tables, context_lens, m_out, l_out, acc_out, KV, scale):
        """Block (split s, KV head kvh, sequence b): day 30's split over int8 pools k, v [rows, hd]
        and fp16 scales k_scale, v_scale [rows]. Writes m_out[b, s, h], l_out[b, s, h],
        acc_out[b, s, h, :] for the group's query heads; a split past the sequence writes nothing."""
        s = cuda.blockIdx.x
        kvh = cuda.blockIdx.y
        b = cuda.blockIdx.z
        tid = cuda.threadIdx.x
        h0 = kvh * group
        n = min(context_lens[b], block_tables.shape[1] * bs)   # read on the device
        chunk = chunk_of(n, m_out.shape[1], bs)
        start = s * chunk
        end = min(start + chunk, n)
        if start >= end:                          # the whole block leaves here: no barrier is skipped
            return
        count = end - start
        team = tid // lanes
        d0 = (tid % lanes) * 8

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
                qr[hh * 8 + i] = float32(q[b, h0 + hh, d0 + i]) * scale if d0 + i < hd else float32(0.0)
                acc[hh * 8 + i] = float32(0.0)
        for i in range(8):
            kr[i] = float32(0.0)
            vr[i] = float32(0.0)
        ks = float32(0.0)
        vs = float32(0.0)

        # 1. every team walks its positions with an online softmax (day 30), the rows int8
        steps = (count + teams - 1) // teams
        for step in range(steps):
            j = step * teams + team
            valid = j < count
            if valid:
                row = pool_row(block_tables, b, start + j, kvh, KV, bs)   # K, V and both scales share it
                # TODO(day 44): ks, vs = this row's two scales (k_scale[row], v_scale[row]) as float32; and
                #   kr[i], vr[i] = the int8 values k[row, d0 + i], v[row, d0 + i] as float32 (0 past hd).
            for hh in range(group):
                x = float32(0.0)
                for i in range(8):
                    x += qr[hh * 8 + i] * kr[i]
                mask = lanes // 2
                while mask > 0:
                    x += shfl_xor(x, mask)
                    mask //= 2
                if valid:
                    # TODO(day 44): x is q . k_int8 (q already times 1 / sqrt(hd)): apply the key's scale.
                    mn = max(m[hh], x)
                    c = rescale(m[hh], mn)
                    p = math.exp(x - mn)
                    l[hh] = l[hh] * c + p
                    pv = p                        # TODO(day 44): fold the value's scale into its weight
                    for i in range(8):
                        acc[hh * 8 + i] = acc[hh * 8 + i] * c + pv * vr[i]
                    m[hh] = mn

        # 2. the teams of a span merge by a butterfly (day 30)
        mask = lanes
        while mask < span:
            for hh in range(group):
                mo = shfl_xor(m[hh], mask)
                lo = shfl_xor(l[hh], mask)
                mn = max(m[hh], mo)
                c = rescale(m[hh], mn)
                co = rescale(mo, mn)
                l[hh] = l[hh] * c + lo * co
                for i in range(8):
                    acc[hh * 8 + i] = acc[hh * 8 + i] * c + shfl_xor(acc[hh * 8 + i], mask) * co
                m[hh] = mn
            mask *= 2

        # 3. one state per span through shared memory (day 30)
        smem = cuda.shared.array(0, float32)
        base_l = states * group
        base_acc = 2 * states * group
        w = tid // span
        if team % (span // lanes) == 0:
            for hh in range(group):
                t = w * group + hh
                if d0 == 0:
                    smem[t] = m[hh]
                    smem[base_l + t] = l[hh]
                for i in range(8):
                    if d0 + i < hd:
                        smem[base_acc + t * hd + d0 + i] = acc[hh * 8 + i]
        cuda.syncthreads()                        # every span's state is in place
        for idx in range(tid, group * hd, nthreads):
            hh = idx // hd
            d = idx % hd
            big = NEG_INF
            for t in range(states):
                big = max(big, smem[t * group + hh])
            total = float32(0.0)
            a = float32(0.0)
            for t in range(states):
                f = rescale(smem[t * group + hh], big)
                total += f * smem[base_l + t * group + hh]
                a += f * smem[base_acc + (t * group + hh) * hd + d]
            acc_out[b, s, h0 + hh, d] = a
            if d == 0:
                m_out[b, s, h0 + hh] = big
                l_out[b, s, h0 + hh] = total

    return split_kernel


@functools.cache
def split_kernel_for(group: int, lanes: int, bs: int, hd: int, nthreads: int):
    """The int8 split kernel for these constants (compiled once per set, then cached)."""
    return make_split_kernel(group, lanes, bs, hd, nthreads)


def paged_decode_attention_int8(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, k_scale: torch.Tensor,
                                v_scale: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, *,
                                splits: int = 0, block_size: int = 128, merge_block: int = 256) -> torch.Tensor:
    """Day 30's paged_decode_attention over int8 pools [num_blocks, KV, kv_block, hd] with fp16 scales
    [num_blocks, KV, kv_block] (row [b, h, o] = pool[b, h, o, :] * scale[b, h, o]). q [B, H, hd]
    float32/float16; block_tables int32 [B, max_blocks], context_lens int32 [B], read on the device.
    splits, block_size, merge_block: day 30's launch parameters. Returns [B, H, hd] in q's dtype."""
    if q.dim() != 3 or k_pool.dim() != 4 or k_pool.shape != v_pool.shape:
        raise ValueError(f"paged_decode_attention_int8: q must be [B, H, hd] and both pools [num_blocks, KV, "
                         f"block_size, hd], got {tuple(q.shape)}, {tuple(k_pool.shape)}, {tuple(v_pool.shape)}")
    B, H, hd = q.shape
    num_blocks, KV, kv_block, pool_hd = k_pool.shape
    if pool_hd != hd or KV == 0 or H % KV or hd == 0 or kv_block == 0:
        raise ValueError(f"paged_decode_attention_int8: q {tuple(q.shape)} does not fit pools {tuple(k_pool.shape)}: "
                         "head_dim must match and H must be a multiple of KV")
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"paged_decode_attention_int8: head_dim {hd} > {MAX_HEAD_DIM} (a warp of lanes, 8 values each)")
    if q.dtype not in (torch.float32, torch.float16) or k_pool.dtype != torch.int8 or v_pool.dtype != torch.int8:
        raise ValueError(f"paged_decode_attention_int8: q must be float32/float16 and the pools int8, got {q.dtype}, "
                         f"{k_pool.dtype}, {v_pool.dtype}")
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not isinstance(s, torch.Tensor) or s.dtype != torch.float16 or tuple(s.shape) != (num_blocks, KV, kv_block):
            raise ValueError(f"paged_decode_attention_int8: {name} must be float16 [num_blocks, KV, block_size] = "
                             f"{[num_blocks, KV, kv_block]}, got {getattr(s, 'dtype', type(s).__name__)} "
                             f"{tuple(getattr(s, 'shape', ()))}")
    for name, t, dims in (("block_tables", block_tables, 2), ("context_lens", context_lens, 1)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != dims or t.shape[0] != B:
            raise ValueError(f"paged_decode_attention_int8: {name} must be an int32 tensor of shape "
                             f"{'[B, max_blocks]' if dims == 2 else '[B]'} on the device with B={B}, "
                             f"got {getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    max_blocks = block_tables.shape[1]
    for name, b in (("block_size", block_size), ("merge_block", merge_block)):
        if b < WARP or b > MAX_BLOCK or b & (b - 1):
            raise ValueError(f"{name} must be a power of two in {WARP}..{MAX_BLOCK}, got {b}")
    gpu.require_device(q, k_pool, v_pool, k_scale, v_scale, block_tables, context_lens)
    out = torch.empty((B, H, hd), dtype=q.dtype, device=q.device)
    if B == 0 or max_blocks == 0:
        return out.zero_()
    group = H // KV
    lanes = lanes_per_key(hd)
    if splits == 0:
        splits = pick_splits(max_blocks, B, KV, kv_block, lanes, block_size, sm_count(q.device))
    if not 1 <= splits <= max_blocks:
        raise ValueError(f"splits must be in 1..max_blocks={max_blocks} (or 0 for automatic), got {splits}")
    need = shared_floats(group, hd, lanes, block_size)
    if need > SHARED_FLOATS:
        raise ValueError(f"paged_decode_attention_int8: {group} query heads per KV head with head_dim {hd} need "
                         f"{4 * need} bytes of shared memory at block_size={block_size} (> {4 * SHARED_FLOATS}): "
                         "use a smaller block_size")
    if merge_floats(hd, merge_block, splits) > SHARED_FLOATS:
        raise ValueError(f"paged_decode_attention_int8: splits={splits} with merge_block={merge_block} needs "
                         f"{4 * merge_floats(hd, merge_block, splits)} bytes of shared memory (> {4 * SHARED_FLOATS}): "
                         "use fewer splits")
    # TODO(day 44): day 30's two launches. The split kernel (split_kernel_for(group, lanes, kv_block, hd,
    #   block_size), grid (splits, KV, B)) takes the pools viewed as [num_blocks * KV * kv_block, hd] and the scales
    #   as [num_blocks * KV * kv_block] (reshape: the same row index for a row and its scale), then block_tables,
    #   context_lens, fp32 m, l [B, splits, H] and acc [B, splits, H, hd], KV and np.float32(1 / sqrt(hd)), with
    #   shared_bytes=4 * need. The merge is day 30's, unchanged. Return out; delete the raise below.
    raise NotImplementedError("Day 44: paged_decode_attention_int8 is not written yet -- edit "
                              "days/day_44/decode_int8.py (lesson: notes/day_44_kv_int8.md)")
