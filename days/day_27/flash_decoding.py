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
        # TODO(day 27): s, kvh = blockIdx.x, blockIdx.y; h0 = kvh * group; n = min(cache_len[0], max_seq);
        # start = s * chunk, end = min(start + chunk, n); an empty split (start >= end) returns at once
        # (the whole block: no barrier is skipped). team = tid // lanes, teams = blockDim // lanes,
        # d0 = (tid % lanes) * 8. In registers (cuda.local.array of GQ, group or 8, constant indices):
        # q[h0 + hh, d0:d0+8] * scale, and a running m = -inf, l = 0, acc = 0 per query head.
        # 1. steps = cdiv(count, teams), the same for every thread; at each step team takes key
        #    j = step * teams + team of the chunk (row kvh * max_seq + start + j) if j < count: K and V
        #    8 values each with load(...) (element by element, guarded, when d0 + 8 > hd). Per head:
        #    the lane's partial dot, summed over the team with shfl_xor(x, mask) for mask = lanes // 2,
        #    ..., 1 (every lane calls it, valid key or not), then, for a valid key, the online-softmax
        #    update of m, l, acc (rescale(m, m_new) for the old state, exp(x - m_new) for the key).
        # 2. every team writes its state to shared memory ([ m | l | acc ], lane d0 == 0 writes m and
        #    l), one barrier, then thread (head, d) combines the teams' states (max M, then
        #    rescale(m_t, M) times each l_t and acc_t[d]) and writes acc_out, and m_out, l_out at d == 0.
        pass

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
    # TODO(day 27): n = min(cache_len[0], max_seq), live = min(splits, cdiv(n, chunk)). Threads
    # (g, d): groups = blockDim // hd copies of the head dim (1 when hd > blockDim: then d steps by
    # blockDim). Each keeps a running (M, L, A) over splits g, g + groups, ... < live: rescale(M, M_new)
    # for what it has, exp(m_s - M_new) for split s. One group: out[h, d] = A / L (0 when L == 0).
    # Several: their states to shared memory ([ m | l | acc ]), one barrier (reached by every
    # thread), then threads tid < hd combine them the same way and write out[h, tid].
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
    # TODO(day 27): about cdiv(2 * sms, KV) splits, but no more than cdiv(max_seq, block_size // lanes)
    # (a chunk is at least one step of the block), and at least 1.
    raise NotImplementedError("Day 27: pick_splits is not written yet -- edit days/day_27/flash_decoding.py "
                              "(lesson: notes/day_27_flash_decoding.md)")


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_len: torch.Tensor, *, splits: int = 0, block_size: int = 128,
                     merge_block: int = 256) -> torch.Tensor:
    """Attention of one new token: q [H, hd] over the first cache_len[0] positions of [KV, max_seq, hd].

    splits: how many chunks the cache is cut into, 1..max_seq (0: pick_splits, from shapes and
    the GPU). block_size: threads per split block; merge_block: threads per merge block (powers
    of two in 32..1024). H a multiple of KV, hd at most 256, float32/float16 only. cache_len (int32 [1] on the device) is read only inside the kernels.
    Returns [H, hd] in q's dtype.
    """
    # TODO(day 27): validate with one-line ValueErrors: q [H, hd] and caches [KV, max_seq, hd] of one
    # shape, head_dim equal, H a multiple of KV, hd <= MAX_HEAD_DIM, cache_len an int32 tensor [1],
    # block_size and merge_block powers of two in 32..1024, float32/float16 tensors, k and v of one
    # dtype, splits in 1..max_seq (0: pick_splits, never from cache_len), shared_floats(...) <=
    # SHARED_FLOATS. Then chunk = cdiv(max_seq, splits); the caches viewed as [KV * max_seq, hd];
    # m, l [splits, H] and acc [splits, H, hd] in fp32, out [H, hd] in q's dtype; launch
    # split_kernel_for(wide, group) on (splits, KV) blocks (wide: hd % 8 == 0 and both views
    # contiguous with 16-byte aligned data pointers) and merge_kernel on H blocks, each with its
    # dynamic shared memory in bytes.
    raise NotImplementedError("Day 27: decode_attention is not written yet -- edit days/day_27/flash_decoding.py "
                              "(lesson: notes/day_27_flash_decoding.md)")
