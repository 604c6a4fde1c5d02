"""Day 19 -- a static KV cache and the kernel that writes new keys/values into it.

Lesson: notes/day_19_kv_cache.md        Check: pytest checkers/day_19

Layout: k, v are [layers, kv_heads, max_seq, head_dim]. One layer is a plain view
[KV, max_seq, hd], and the keys one KV head reads in decode attention (day 20) are contiguous
rows. Allocated once (static): no reallocation while generating, and CUDA-graph friendly.
"""
from __future__ import annotations

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda


class KVCache:
    """Static cache: k and v are [layers, kv_heads, max_seq, head_dim].

    Layout choice: one layer's slice k[l] is [KV, max_seq, hd], so the keys one KV head reads in
    decode attention are contiguous rows (coalesced loads), and a layer is a plain view.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, max_seq: int, head_dim: int,
                 dtype: torch.dtype, device):
        if min(num_layers, num_kv_heads, max_seq, head_dim) < 1:
            raise ValueError(f"KVCache sizes must be >= 1, got layers={num_layers}, kv_heads={num_kv_heads}, "
                             f"max_seq={max_seq}, head_dim={head_dim}")
        shape = (num_layers, num_kv_heads, max_seq, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_seq = max_seq
        self.length = 0  # tokens stored (host-side bookkeeping, no device sync)

    def reserve(self, new_tokens: int) -> None:
        """Raise before writing past the end -- with the limit in the message."""
        if self.length + new_tokens > self.max_seq:
            raise ValueError(f"KV cache full: {self.length} + {new_tokens} tokens > max_seq={self.max_seq}; "
                             "use a shorter prompt, fewer new tokens, or a larger --max-seq")


@cuda.jit
def kv_write_kernel(k_cache, v_cache, k, v, positions):
    """One thread per (token, kv head, dim): copy k[t, h, d] to k_cache[h, positions[t], d] (and v).

    Consecutive threads take consecutive d, so both the reads and the writes are coalesced.
    """
    i = cuda.grid(1)
    tokens, heads, dim = k.shape
    if i < tokens * heads * dim:
        d = i % dim
        h = (i // dim) % heads
        t = i // (dim * heads)
        p = positions[t]
        if 0 <= p < k_cache.shape[1]:            # never write outside the cache (reserve() checks first)
            k_cache[h, p, d] = k[t, h, d]
            v_cache[h, p, d] = v[t, h, d]


def kv_write(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             positions: torch.Tensor, *, block_size: int = 128) -> None:
    """Store k, v [T, KV, hd] into one layer's cache [KV, max_seq, hd] at positions [T].

    Works for a prefill (T tokens at once) and a decode append (T = 1). positions stay on the
    device (int32): no host sync. Positions outside [0, max_seq) are skipped, not written.
    Raise ValueError (one line) unless both caches are [KV, max_seq, hd], k and v are both
    [T, KV, hd] with the cache's KV and head_dim, and positions is [T].
    """
    if k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"kv_write: caches must both be [KV, max_seq, hd], got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    if k.dim() != 3 or k.shape != v.shape or k.shape[1] != k_cache.shape[0] or k.shape[2] != k_cache.shape[2]:
        raise ValueError(f"kv_write: k and v must be [T, KV={k_cache.shape[0]}, hd={k_cache.shape[2]}], got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if positions.shape != (k.shape[0],):
        raise ValueError(f"kv_write: positions must be [T={k.shape[0]}], got {tuple(positions.shape)}")
    gpu.require_device(k_cache, v_cache, k, v, positions)
    n = k.numel()
    if n:
        gpu.launch(kv_write_kernel, gpu.cdiv(n, block_size), block_size, k_cache, v_cache, k, v, positions)
