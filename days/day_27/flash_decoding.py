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
    # TODO(day 27): barrier (every value in place); then halve `stride` from blockDim // 2: threads
    # tid < stride fold smem[base + r * blockDim + tid + stride] into smem[base + r * blockDim + tid]
    # (max or +) for every row r < group, with a barrier after each step.
    pass


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
        # TODO(day 27): s, kvh = blockIdx.x, blockIdx.y; h0 = kvh * group; n = min(cache_len[0], max_seq);
        # start = s * chunk, end = min(start + chunk, n). An empty split (start >= end) writes
        # m = -inf, l = 0 for its heads and returns (the whole block: no barrier is skipped).
        # Else: stage q * scale of the group in shared memory (barrier);
        # 1. scores, one key per thread: K row kvh * max_seq + start + j, read with
        #    load(k, row, d) 8 values at a time (then the hd % 8 tail), one dot per head;
        # 2. per head: the max (tree_reduce), exp(s - max) back into the scores and their sum
        #    (tree_reduce); write m_out, l_out; a barrier before the rows are reused;
        # 3. per head: teams of R = cdiv(hd, 8) threads cover a V row, 8 values each (load);
        #    team c sums e_j * v_j over keys c, c + copies, ...; barrier; add the teams' sums
        #    into acc_out[s, h0 + hh, :]; barrier.
        pass

    return split_kernel


split_wide = make_split_kernel(load8_wide)   # K rows start on 16-byte boundaries
split_any = make_split_kernel(load8)         # any alignment


@cuda.jit
def merge_kernel(m_in, l_in, acc_in, out):
    """One block per query head h: out[h] = sum_s w_s acc_s / sum_s w_s l_s with w_s = exp(m_s - M),
    M = max_s m_s (the online-softmax rule, across blocks). Empty splits have l = 0: they are
    skipped, their acc was never written. Dynamic shared memory: [ w (splits) | rows (blockDim) ]."""
    # TODO(day 27): M = max_s m_in[s, h] (tree_reduce); w_s = exp(m_s - M) for splits with l_s > 0,
    # else 0 (their acc was never written), kept in smem[s]; L = sum_s w_s l_s (tree_reduce);
    # out[h, d] = sum_s w_s acc_in[s, h, d] / L (0 when L == 0), threads over (copy of the head
    # dim, d), then the copies added up. Barriers after reading M and L, before their rows are reused.
    pass


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
    # TODO(day 27): about cdiv(2 * sms, KV) splits, but no chunk shorter than block_size keys, and
    # at least cdiv(max_seq, cap) where cap = (SHARED_FLOATS - shared_floats(group, hd, 0, block_size)) // group.
    raise NotImplementedError("Day 27: pick_splits is not written yet -- edit days/day_27/flash_decoding.py "
                              "(lesson: notes/day_27_flash_decoding.md)")


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_len: torch.Tensor, *, splits: int = 0, block_size: int = 128,
                     merge_block: int = 256) -> torch.Tensor:
    """Attention of one new token: q [H, hd] over the first cache_len[0] positions of [KV, max_seq, hd].

    splits: how many chunks the cache is cut into (0: pick_splits, from shapes and the GPU).
    block_size: threads per split block; merge_block: threads per merge block (powers of two).
    cache_len (int32 [1] on the device) is read only inside the kernels. Returns [H, hd] in q's dtype.
    """
    # TODO(day 27): validate (as day 20, plus splits in 0..max_seq, the knobs powers of two in
    # 32..1024, hd <= 8 * block_size, shared_floats(...) <= SHARED_FLOATS) with one-line ValueErrors;
    # splits = pick_splits(...) when 0 (never from cache_len); chunk = cdiv(max_seq, splits); view
    # the caches as [KV * max_seq, hd]; m, l [splits, H], acc [splits, H, hd] fp32, out [H, hd];
    # launch split_wide (16-byte aligned rows) or split_any on (splits, KV) blocks and merge_kernel
    # on H blocks, each with its dynamic shared memory in bytes.
    raise NotImplementedError("Day 27: decode_attention is not written yet -- edit days/day_27/flash_decoding.py "
                              "(lesson: notes/day_27_flash_decoding.md)")
