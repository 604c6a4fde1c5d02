"""Cache backends: what `attend(layer, q, k, v, positions)` does inside the learner's forward.

Every backend has `prepare(start, T)`, called on the host before a forward of T tokens at
positions start..start+T-1, which writes the step's metadata into device buffers the backend
owns and allocates once; and `__call__`, which launches kernels that read only those buffers.
So a decode step captured in a CUDA graph replays at any length: the graph reads `cache_len`
from the same address every time, and `prepare` changes the value there.
- NoCache: recompute the prefix every step (day 18).
- StaticCache: a [layers, KV, max_len, hd] cache (days 19 and 20).
- PagedCache: pools of fixed-size blocks and a block table (days 28-31); the engine takes it
  from the registry (`ops.PagedCache`), like a kernel: shared/reference/paged.py or day 31.
`release()` is called when a generation ends: a backend gives back what the sequence holds.
`rollback(length)` (static and paged) keeps the first `length` tokens: the drafts a speculative
verify wrote and the target rejected (day 35).
"""
from __future__ import annotations

import torch


class NoCache:
    """Plain causal attention over the tokens given: the caller feeds the whole prefix."""

    def __init__(self, ops):
        self.ops = ops

    def prepare(self, start: int, T: int) -> None:
        if start:
            raise ValueError("NoCache recomputes the whole prefix: start must be 0")

    def release(self) -> None:
        pass

    def __call__(self, layer, q, k, v, positions):
        return self.ops.attention(q, k, v)


class StaticCache:
    """The day-19 KVCache plus the device buffer `cache_len` (int32 [1]) that decode attention reads."""

    def __init__(self, ops, config, max_len: int, dtype: torch.dtype, device):
        self.ops = ops
        self.kv = ops.KVCache(config.num_layers, config.num_kv_heads, max_len, config.head_dim, dtype, device)
        self.max_len = max_len
        self.cache_len = torch.zeros(1, dtype=torch.int32, device=device)
        self.start = self.T = 0

    def prepare(self, start: int, T: int) -> None:
        """Host ints in, one device write out: no sync, no new tensor."""
        self.kv.length = start
        self.kv.reserve(T)                      # one clear line before writing past the end
        self.start, self.T = start, T
        self.cache_len.fill_(start + T)
        self.kv.length = start + T

    def release(self) -> None:
        pass                                    # the cache is the runner's, kept for the next sequence

    def rollback(self, length: int) -> None:
        """Keep the first `length` tokens: speculative decoding drops its rejected drafts (day 35)."""
        if not 0 <= length <= self.kv.length:
            raise ValueError(f"rollback to {length} tokens: the cache holds {self.kv.length}, so 0..{self.kv.length}")
        self.kv.length = length
        self.cache_len.fill_(length)

    def __call__(self, layer, q, k, v, positions):
        ops, kc, vc = self.ops, self.kv.k[layer], self.kv.v[layer]
        ops.kv_write(kc, vc, k, v, positions)
        if self.T == 1 and self.start > 0:      # decode: one query, length read on the device
            return ops.decode_attention(q[0], kc, vc, self.cache_len)[None]
        if self.start == 0:                     # prefill from empty: attend over the new tokens
            return ops.attention(q, k, v)
        end = self.start + self.T               # a chunk after cached tokens
        return ops.attention(q, kc[:, :end].transpose(0, 1), vc[:, :end].transpose(0, 1))
