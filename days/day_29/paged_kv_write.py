"""Day 29 -- the paged KV write: scatter new keys and values into a block pool by slot.

Lesson: notes/day_29_paged_kv_write.md        Check: pytest checkers/day_29

Layout: one layer's pools are k_pool, v_pool [num_blocks, KV, block_size, hd]. Token t of this
step goes to slot = slot_mapping[t], i.e. block slot // block_size at offset slot % block_size
(day 28's BlockAllocator hands out the slots). Inside a block, one KV head's block_size x hd
keys are contiguous, so decode attention (day 30) reads a head's block as one run of memory.

The slots stay on the device (int32) and are read inside the kernel: no host sync, so a CUDA
graph can replay the write with new slots. A slot < 0 is padding (a batch padded to a captured
size): nothing is written for it.
"""
from __future__ import annotations

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda

FLOATS = (torch.float16, torch.float32)


@cuda.jit
def paged_kv_write_kernel(k_pool, v_pool, k, v, slot_mapping):
    """One thread per (token, kv head, dim): copy k[t, h, d] to k_pool[b, h, o, d] (and v), where
    slot = slot_mapping[t], b = slot // block_size, o = slot % block_size.

    Consecutive threads take consecutive d: both the reads of k and the writes into a block row
    are coalesced.
    """
    # TODO(day 29): i = cuda.grid(1); split i into (t, h, d) with d fastest; guard i; read
    #   slot = slot_mapping[t]; skip it unless 0 <= slot < num_blocks * block_size; else copy
    #   k[t, h, d] -> k_pool[slot // block_size, h, slot % block_size, d], and v likewise.
    pass


def paged_kv_write(k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   slot_mapping: torch.Tensor, *, threads: int = 128) -> None:
    """Scatter k, v [T, KV, hd] into one layer's pools [num_blocks, KV, block_size, hd].

    slot_mapping: int32 [T] on the device; token t goes to block slot // block_size, offset
    slot % block_size. A slot < 0 is padding: that token is not written; nor is a slot past the
    pool (>= num_blocks * block_size: the kernel's guard). Pools and k, v may be fp16 or fp32,
    not necessarily the same (the store casts). `threads` = threads per block.
    """
    # TODO(day 29): one-line ValueErrors before any launch: pools 4-D and of one shape; k, v [T, KV, hd]
    #   matching the pools; pools and k, v fp16/fp32 (each pair one dtype); slot_mapping int32 [T];
    #   gpu.require_device(...); then launch one thread per element of k (none when T = 0).
    raise NotImplementedError("Day 29: paged_kv_write is not written yet -- edit days/day_29/paged_kv_write.py "
                              "(lesson: notes/day_29_paged_kv_write.md)")
