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
        """Allocate zeroed k and v [layers, kv_heads, max_seq, head_dim]; set max_seq and length = 0."""
        raise NotImplementedError("Day 19: KVCache.__init__ is not written yet -- edit days/day_19/kv_cache.py "
                                  "(lesson: notes/day_19_kv_cache.md)")

    def reserve(self, new_tokens: int) -> None:
        """Raise before writing past the end -- with the limit in the message."""
        raise NotImplementedError("Day 19: KVCache.reserve is not written yet -- edit days/day_19/kv_cache.py "
                                  "(lesson: notes/day_19_kv_cache.md)")


@cuda.jit
def kv_write_kernel(k_cache, v_cache, k, v, positions):
    """One thread per (token, kv head, dim): copy k[t, h, d] to k_cache[h, positions[t], d] (and v).

    Consecutive threads take consecutive d, so both the reads and the writes are coalesced.
    """
    # TODO(day 19): i = cuda.grid(1); split i into (t, h, d) with d fastest; guard i; read
    #   p = positions[t]; if 0 <= p < max_seq copy k[t, h, d] -> k_cache[h, p, d] and v likewise.
    pass


def kv_write(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             positions: torch.Tensor, *, block_size: int = 128) -> None:
    """Store k, v [T, KV, hd] into one layer's cache [KV, max_seq, hd] at positions [T].

    Works for a prefill (T tokens at once) and a decode append (T = 1). positions stay on the
    device (int32): no host sync. Positions outside [0, max_seq) are skipped, not written.
    Raise ValueError (one line) unless both caches are [KV, max_seq, hd], k and v are both
    [T, KV, hd] with the cache's KV and head_dim, and positions is [T].
    """
    raise NotImplementedError("Day 19: kv_write is not written yet -- edit days/day_19/kv_cache.py "
                              "(lesson: notes/day_19_kv_cache.md)")
