"""Day 44 -- the engine's int8 KV cache: which attention each step runs, and on what.

Lesson: notes/day_44_kv_int8.md        Check: pytest checkers/day_44

Given (shared/reference/kv_int8.py, the base class): day 31's paged backend with int8 pools k, v
[layers, num_blocks, KV, block_size, hd] and fp16 scales k_scale, v_scale [layers, num_blocks, KV,
block_size], allocated once; blocks, slots, tables, copy on write and rollback as on day 31;
`gather(layer, end, dtype)`: a sequence's first `end` rows, dequantized. There is no pool in the
model dtype: the int8 pool is the only copy of the cache, which is what halves its bytes.
"""
from __future__ import annotations

from shared.reference.kv_int8 import Int8PagedCache as Int8Pools


class Int8PagedCache(Int8Pools):
    """`attend(layer, q, k, v, positions)` over the int8 pools (see __call__)."""

    def __call__(self, layer, q, k, v, positions):
        """Every step quantizes its k, v into the pools (ops.paged_kv_write_int8); then a prompt
        attends over its fresh k, v (ops.attention: exact, and nothing reads the pool back), one
        token over the int8 pool (ops.paged_decode_attention_int8, capture-safe), a chunk after
        cached tokens over the sequence's rows gathered and dequantized (ops.attention)."""
        ops = self.ops
        kp, vp, ks, vs = self.k[layer], self.v[layer], self.k_scale[layer], self.v_scale[layer]
        ops.paged_kv_write_int8(kp, vp, ks, vs, k, v, self.slot_mapping[:self.T])
        if self.T == 1 and self.start > 0:
            return ops.paged_decode_attention_int8(q, kp, vp, ks, vs, self.block_tables, self.context_lens)
        if self.start == 0:
            return ops.attention(q, k, v)
        return ops.attention(q, *self.gather(layer, self.start + self.T, q.dtype))
