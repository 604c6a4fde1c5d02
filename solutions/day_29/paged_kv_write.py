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
    i = cuda.grid(1)
    tokens, heads, dim = k.shape
    if i < tokens * heads * dim:
        d = i % dim
        h = (i // dim) % heads
        t = i // (dim * heads)
        slot = slot_mapping[t]
        block_size = k_pool.shape[2]
        if 0 <= slot < k_pool.shape[0] * block_size:     # padding (< 0) and out-of-pool slots are skipped
            b = slot // block_size
            o = slot % block_size
            k_pool[b, h, o, d] = k[t, h, d]               # the store casts to the pool's dtype
            v_pool[b, h, o, d] = v[t, h, d]


def paged_kv_write(k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   slot_mapping: torch.Tensor, *, threads: int = 128) -> None:
    """Scatter k, v [T, KV, hd] into one layer's pools [num_blocks, KV, block_size, hd].

    slot_mapping: int32 [T] on the device; token t goes to block slot // block_size, offset
    slot % block_size. A slot < 0 is padding: that token is not written; nor is a slot past the
    pool (>= num_blocks * block_size: the kernel's guard). Pools and k, v may be fp16 or fp32,
    not necessarily the same (the store casts). `threads` = threads per block.
    """
    if k_pool.dim() != 4 or k_pool.shape != v_pool.shape:
        raise ValueError(f"paged_kv_write: pools must both be [num_blocks, KV, block_size, hd], got "
                         f"{tuple(k_pool.shape)} and {tuple(v_pool.shape)}")
    _, kv, _, hd = k_pool.shape
    if k.dim() != 3 or k.shape != v.shape or k.shape[1] != kv or k.shape[2] != hd:
        raise ValueError(f"paged_kv_write: k and v must be [T, KV={kv}, hd={hd}], got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k_pool.dtype not in FLOATS or v_pool.dtype != k_pool.dtype or k.dtype not in FLOATS or v.dtype != k.dtype:
        raise ValueError(f"paged_kv_write: pools and k, v must be fp16 or fp32 (each pair one dtype), got pools "
                         f"{k_pool.dtype}/{v_pool.dtype}, k/v {k.dtype}/{v.dtype}")
    if slot_mapping.dtype != torch.int32 or slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"paged_kv_write: slot_mapping must be int32 [T={k.shape[0]}], got {slot_mapping.dtype} "
                         f"{tuple(slot_mapping.shape)}")
    if threads < 1:
        raise ValueError(f"paged_kv_write: threads must be >= 1, got {threads}")
    gpu.require_device(k_pool, v_pool, k, v, slot_mapping)
    n = k.numel()
    if n:
        gpu.launch(paged_kv_write_kernel, gpu.cdiv(n, threads), threads, k_pool, v_pool, k, v, slot_mapping)
