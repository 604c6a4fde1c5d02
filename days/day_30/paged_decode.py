"""Day 30 -- paged decode attention: day 27's split-KV kernel, reading keys through block tables.

Lesson: notes/day_30_paged_decode.md        Check: pytest checkers/day_30

The KV cache is a pool of fixed-size blocks [num_blocks, KV, block_size, hd] shared by every
sequence (days 28 and 29). Sequence b's position p lives in block block_tables[b, p // block_size]
at offset p % block_size. Everything else is day 27: blocks (split, KV head, sequence) compute
partial softmaxes over chunks of keys (a team of lanes per key, a running state per query head in
registers), a merge kernel combines them per (head, sequence).
"""
import functools
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


# ---- given: day 27's rescale and merge (with a batch dimension, specialized on constants) ---------------------------------
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


def state_span(lanes: int) -> int:
    """Threads whose teams merge by shuffles into one state before the block's shared-memory merge:
    a warp on a GPU. The simulator runs every shuffle through two barriers of the whole block
    (~100x slower than a barrier-free step), so there each team keeps its own state (span = lanes)
    and the butterfly has no step: the same code, merged through shared memory as on day 27."""
    return lanes if gpu.SIM else WARP


@cuda.jit(device=True)
def chunk_of(n, splits, bs):
    """Positions per split for a sequence of n live positions: its ceil(n / bs) KV blocks spread
    over the `splits` splits, whole blocks each (at least one). Sized by n, read on the device, so
    70 positions in a table of 1024 blocks cost what 70 positions cost, and the splits of a long
    sequence share its work evenly whatever the table's width."""
    blocks = (n + bs - 1) // bs
    return max((blocks + splits - 1) // splits, 1) * bs


def make_merge_kernel(hd, nthreads, bs):
    """The merge kernel for head_dim `hd`, `nthreads` threads per block and KV blocks of `bs`
    positions, all three compile-time constants: `//` and `%` by them become shifts and the loops
    over groups unroll (a division by a runtime int is a subroutine of ~60 instructions)."""
    if hd <= nthreads:
        groups, dstep = nthreads // hd, hd
    else:
        groups, dstep = 1, nthreads

    @cuda.jit
    def merge_kernel(m_in, l_in, acc_in, context_lens, max_pos, out):
        """Block (query head h, sequence b): day 27's merge over sequence b's live splits
        s < cdiv(n_b, chunk), chunk = chunk_of(n_b, splits, bs), n_b = min(context_lens[b], max_pos)
        (the others hold no key and wrote nothing). A sequence with no keys gets zeros.
        Every live split's m goes to shared memory at once and the block takes their max M; then
        each split's weight is exp(m_s - M) with no running rescale, so a thread's loads of
        acc and l for two splits do not wait on each other's exp. Shared memory:
        [ m (splits) | acc (groups * hd) | l (groups) ]."""
        h = cuda.blockIdx.x
        b = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        splits = m_in.shape[1]
        n = min(context_lens[b], max_pos)
        chunk = chunk_of(n, splits, bs)
        live = min(splits, (n + chunk - 1) // chunk)
        smem = cuda.shared.array(0, float32)
        for s in range(tid, live, nthreads):
            smem[s] = m_in[b, s, h]
        cuda.syncthreads()                        # every live split's m is in place
        big = NEG_INF
        for s in range(live):
            big = max(big, smem[s])
        g = tid // dstep
        d0 = tid % dstep
        if g < groups:
            for d in range(d0, hd, dstep):
                a0 = float32(0.0)
                a1 = float32(0.0)
                t0 = float32(0.0)
                t1 = float32(0.0)
                s = g
                while s + groups < live:          # two splits per step: four loads in flight
                    x0 = acc_in[b, s, h, d]
                    x1 = acc_in[b, s + groups, h, d]
                    y0 = l_in[b, s, h]
                    y1 = l_in[b, s + groups, h]
                    w0 = rescale(smem[s], big)
                    w1 = rescale(smem[s + groups], big)
                    a0 += w0 * x0
                    a1 += w1 * x1
                    t0 += w0 * y0
                    t1 += w1 * y1
                    s += 2 * groups
                if s < live:
                    w0 = rescale(smem[s], big)
                    a0 += w0 * acc_in[b, s, h, d]
                    t0 += w0 * l_in[b, s, h]
                a = a0 + a1
                total = t0 + t1
                if groups == 1:
                    out[b, h, d] = a / total if total > 0 else float32(0.0)
                else:
                    smem[splits + g * hd + d] = a
                    if d == 0:
                        smem[splits + groups * hd + g] = total
        cuda.syncthreads()                        # every group's sums are in place
        if groups > 1 and tid < hd:
            a = float32(0.0)
            total = float32(0.0)
            for gg in range(groups):
                a += smem[splits + gg * hd + tid]
                total += smem[splits + groups * hd + gg]
            out[b, h, tid] = a / total if total > 0 else float32(0.0)

    return merge_kernel


@functools.cache
def merge_kernel_for(hd: int, nthreads: int, bs: int):
    """The merge kernel for these constants (compiled once per triple, then cached)."""
    return make_merge_kernel(hd, nthreads, bs)


# ---- the exercise: the split kernel through the block table -------------------------------------
@cuda.jit(device=True)
def pool_row(block_tables, b, p, kvh, KV, bs):
    """The row of the pool (viewed as [num_blocks * KV * block_size, hd]) that holds position p
    of sequence b, KV head kvh: block block_tables[b, p // bs], offset p % bs."""
    # TODO(day 30): the block id from sequence b's table row, then its row in the pool
    # [num_blocks, KV, bs, hd] viewed as rows of hd values.
    return 0


def make_split_kernel(load, group, lanes, bs, hd, nthreads):
    """The paged split kernel for `group` query heads per KV head, reading 8 values at a time with
    `load` (load8_wide: one 16-byte load, rows 16-byte aligned; load8: any alignment). Every
    argument is a compile-time constant: `group` keeps the per-head state in registers; `lanes`,
    `bs` (KV block size), `hd` and `nthreads` (threads per block) turn `//` and `%` into shifts
    and let the loops unroll, so a warp runs a few hundred instructions per key, not thousands."""
    GQ = 8 * group
    teams = nthreads // lanes
    span = state_span(lanes)              # threads whose teams end in one shared state
    states = nthreads // span

    @cuda.jit
    def split_kernel(q, k, v, block_tables, context_lens, m_out, l_out, acc_out, KV, scale):
        """Block (split s, KV head kvh, sequence b): positions [s * chunk, min((s + 1) * chunk, n))
        of sequence b, n = context_lens[b], chunk = chunk_of(n, splits, bs) (splits = m_out.shape[1]),
        for the `group` query heads of KV head kvh. chunk is a multiple of bs, so a split starts on
        a block boundary. A team of `lanes` threads takes one
        position per step and finds its pool row through the table (never for a position >= n:
        entries past it are garbage). Writes m_out[b, s, h], l_out[b, s, h], acc_out[b, s, h, :];
        a split that starts at or past n writes nothing. The teams of a warp merge by shuffles
        (on a GPU: span = WARP), then one state per span of threads goes through dynamic shared
        memory (fp32): [ m (states * group) | l (states * group) | acc (states * group * hd) ].
        """
        # TODO(day 30): day 27's split kernel with a third grid dimension b (the sequence):
        # n = min(context_lens[b], max_blocks * bs), chunk = chunk_of(n, m_out.shape[1], bs) (the
        # merge finds the live splits the same way); an empty split returns at once. Each team finds
        # its position's pool row with pool_row(...) (only for a valid position j < count: table
        # entries past n are garbage) and reads K and V from that row; the queries are q[b, ...].
        # Then merge the teams: first the teams of a span (state_span(lanes): a warp on a GPU), by a
        # butterfly of shfl_xor over masks lanes, 2 * lanes, ... < span (lane i and lane i ^ mask
        # hold the same dims of two teams); then the first team of each span puts its state in
        # shared memory (the layout above) and, after one barrier, the block merges the `states`
        # states and writes m_out[b, s, h], l_out[b, s, h], acc_out[b, s, h, :]. Use the closure's
        # constants (lanes, bs, hd, nthreads, teams, span, states), not cuda.blockDim.x or q.shape:
        # that is what makes it fast.
        pass

    return split_kernel


@functools.cache
def split_kernel_for(wide: bool, group: int, lanes: int, bs: int, hd: int, nthreads: int):
    """The split kernel for these constants (compiled once per set, then cached)."""
    return make_split_kernel(load8_wide if wide else load8, group, lanes, bs, hd, nthreads)


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
    """The split kernel's dynamic shared memory, in fp32 values: one (m, l, acc) state per span and head."""
    return (block_size // state_span(lanes)) * group * (hd + 2)


def merge_floats(hd: int, merge_block: int, splits: int) -> int:
    """The merge kernel's dynamic shared memory, in fp32 values: every split's m, then one (acc, l)
    sum per group of threads."""
    return splits + max(merge_block // hd, 1) * (hd + 1)


def pick_splits(max_blocks: int, B: int, KV: int, kv_block: int, lanes: int, block_size: int, sms: int) -> int:
    """Splits per sequence, from shapes and the SM count only (a captured graph keeps the grid):
    about two thread blocks per SM with all B sequences full, no more than a full table fills in
    steps of the block (block_size // lanes positions), at most one per KV block. How many
    positions each split takes follows the live length, on the device (chunk_of)."""
    want = min(gpu.cdiv(2 * sms, B * KV), gpu.cdiv(max_blocks * kv_block, block_size // lanes))
    return max(1, min(want, max_blocks))


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, *, splits: int = 0,
                           block_size: int = 128, merge_block: int = 256) -> torch.Tensor:
    """One new query per sequence and head over that sequence's paged cache.

    q [B, H, hd] (H a multiple of KV, hd at most 256, float32/float16); pools [num_blocks, KV,
    kv_block, hd] of q's head_dim and one dtype; block_tables int32 [B, max_blocks]; context_lens
    int32 [B] (0 gives zeros; so do B == 0 and max_blocks == 0). Tables and lengths are read only
    inside the kernels. splits: chunks per sequence, 1..max_blocks (0: pick_splits; sequence b's
    chunk is chunk_of(n_b, splits, kv_block) positions); block_size, merge_block: threads per
    block (powers of two in 32..1024). Returns [B, H, hd] in q's dtype.
    """
    # TODO(day 30): validate with one-line ValueErrors: q [B, H, hd] and pools [num_blocks, KV, kv_block,
    # hd] of one shape and dtype (float32/float16), head_dim equal and <= MAX_HEAD_DIM, H a multiple of
    # KV, int32 block_tables [B, max_blocks] and context_lens [B], the knobs as day 27. B == 0 or
    # max_blocks == 0: return zeros (written: torch.empty holds anything). splits = pick_splits(...)
    # when 0, else in 1..max_blocks (each sequence's chunk is found on the device: chunk_of);
    # shared_floats(...) and merge_floats(hd, merge_block, splits) <= SHARED_FLOATS. View the pools as
    # [num_blocks * KV * kv_block, hd]; m, l [B, splits, H], acc [B, splits, H, hd] fp32; launch
    # split_kernel_for(wide, group, lanes, kv_block, hd, block_size) on (splits, KV, B) and the
    # given merge_kernel_for(hd, merge_block, kv_block) on (H, B), with max_pos = max_blocks * kv_block
    # and 4 * merge_floats(hd, merge_block, splits) bytes of shared memory.
    raise NotImplementedError("Day 30: paged_decode_attention is not written yet -- edit days/day_30/paged_decode.py "
                              "(lesson: notes/day_30_paged_decode.md)")
