"""Reference for day 44: the int8 KV cache (`tinyinfer generate|bench --kv-int8`).

Every key and value row -- one token, one KV head, hd numbers -- is stored as hd int8 values and
ONE fp16 scale, symmetric, in float32 arithmetic:

    scale = fp16(max_d |x_d| / 127)          (the division in float32, then rounded to fp16: stored)
    s     = float32(scale)                   (what every reader will see)
    q_d   = clamp(rint(x_d / s), -127, 127)  if s > 0, else 0
    x_d  ~= q_d * s

rint rounds half to even (torch.round). Quantizing with the STORED scale makes the write and
every read agree on s; since fp16 may round max|x| / 127 down (by up to half an fp16 step, which
is a large part of a subnormal scale), x_d / s can pass 127.5, and the clamp is what keeps it in
int8. A row whose scale rounds to 0 (max|x| below about 3.8e-6) is stored as zeros. The
round-trip error of every element is at most max(s / 2, max|x| - 127 s).

Layout: one layer's pools k, v [num_blocks, KV, block_size, hd] int8 and scales k_scale,
v_scale [num_blocks, KV, block_size] fp16 -- the scale of the row at [b, h, o] is at [b, h, o].
Per token and head, because a token is written once, when it arrives: its scale never depends on
a token that comes later (a per-block scale would have to be fixed before the block is full).

- `quantize_kv(x)` / `dequantize_kv(q, scale)`: the rule above on any [..., hd].
- `paged_kv_write_int8(k_pool, v_pool, k_scale, v_scale, k, v, slot_mapping)`: day 29's scatter,
  quantizing on the way (slot < 0: nothing written).
- `paged_decode_attention_int8(q, k_pool, v_pool, k_scale, v_scale, block_tables, context_lens)`:
  day 30's attention over the dequantized rows.
- `Int8PagedCache`: day 31's backend over int8 pools (see its docstring for each path).
None of them reads a tensor back to the host: the decode step stays capture-safe.
"""
from __future__ import annotations

import torch

from shared.reference.ops import paged_decode_attention, paged_kv_write
from shared.reference.paged import PagedCache

QMAX = 127
SCALE_DTYPE = torch.float16


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., hd] (fp16/fp32) -> (q int8 [..., hd], scale fp16 [...]): one scale per row."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    scale = (amax / torch.full_like(amax, QMAX)).to(SCALE_DTYPE)      # a true float32 division, then fp16
    s = scale.float().unsqueeze(-1)
    q = torch.where(s > 0, torch.round(xf / torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(xf))
    return q.clamp(-QMAX, QMAX).to(torch.int8), scale


def dequantize_kv(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q int8 [..., hd], scale [...] -> q * scale in float32, then `dtype`."""
    return (q.float() * scale.float().unsqueeze(-1)).to(dtype)


def kv_row_bytes(head_dim: int, kv_int8: bool, dtype_bytes: int = 2) -> int:
    """Bytes one token's key (or value) row of one KV head takes in the pool: hd in the model dtype,
    or hd int8 values and a 2-byte scale."""
    return head_dim + SCALE_DTYPE.itemsize if kv_int8 else head_dim * dtype_bytes


def paged_kv_write_int8(k_pool: torch.Tensor, v_pool: torch.Tensor, k_scale: torch.Tensor, v_scale: torch.Tensor,
                        k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Quantize k, v [T, KV, hd] per (token, head) and scatter them into one layer's int8 pools
    [num_blocks, KV, block_size, hd] and fp16 scales [num_blocks, KV, block_size] by slot (day 29's
    rule: token t goes to block slot // block_size, offset slot % block_size; slot < 0 is padding)."""
    for pool, scales, new in ((k_pool, k_scale, k), (v_pool, v_scale, v)):
        q, s = quantize_kv(new)
        paged_kv_write(pool, scales.unsqueeze(-1), q, s.unsqueeze(-1), slot_mapping)


def paged_decode_attention_int8(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, k_scale: torch.Tensor,
                                v_scale: torch.Tensor, block_tables: torch.Tensor,
                                context_lens: torch.Tensor) -> torch.Tensor:
    """Day 30's paged decode attention over an int8 cache: each sequence's blocks dequantized
    (q * scale, float32), then the same softmax. q [B, H, hd] -> [B, H, hd] in q's dtype."""
    B, max_blocks = block_tables.shape
    blocks = block_tables.long().clamp(0, k_pool.shape[0] - 1).reshape(-1)   # entries past a sequence: any block
    keys = dequantize_kv(k_pool[blocks], k_scale[blocks])                     # [B * max_blocks, KV, bs, hd]
    values = dequantize_kv(v_pool[blocks], v_scale[blocks])
    table = torch.arange(B * max_blocks, dtype=torch.int32, device=q.device).view(B, max_blocks)
    return paged_decode_attention(q, keys, values, table, context_lens)


class Int8PagedCache(PagedCache):
    """Day 31's paged backend (shared/reference/paged.py) with an int8 pool: k, v [layers,
    num_blocks, KV, block_size, hd] int8 and k_scale, v_scale [layers, num_blocks, KV, block_size]
    fp16 -- no pool in the model dtype. Blocks, slots, tables and rollback are day 31's.

    Every step writes its k, v through ops.paged_kv_write_int8 (quantize on write), then:
    - a prompt (start 0) attends over the fresh k, v with ops.attention (flash): they are at hand
      in the model dtype, so the prompt sees them exactly and no kernel reads the pool back;
    - one token (decode) with ops.paged_decode_attention_int8 (dequantized in registers; capture-safe);
    - a chunk after cached tokens (a prompt fed in pieces, a step run again) over the sequence's
      blocks gathered and dequantized, with ops.attention.
    """

    def allocate_pools(self, config, num_blocks: int, block_size: int, dtype: torch.dtype, device) -> None:
        shape = (config.num_layers, num_blocks, config.num_kv_heads, block_size, config.head_dim)
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=torch.int8, device=device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=device)
        self.k_scale = torch.zeros(shape[:-1], dtype=SCALE_DTYPE, device=device)
        self.v_scale = torch.zeros(shape[:-1], dtype=SCALE_DTYPE, device=device)

    def pools(self) -> tuple[torch.Tensor, ...]:
        return self.k, self.v, self.k_scale, self.v_scale

    def __call__(self, layer, q, k, v, positions):
        ops = self.ops
        kp, vp, ks, vs = self.k[layer], self.v[layer], self.k_scale[layer], self.v_scale[layer]
        ops.paged_kv_write_int8(kp, vp, ks, vs, k, v, self.slot_mapping[:self.T])
        if self.T == 1 and self.start > 0:                # decode: int8 rows, lengths and tables on the device
            return ops.paged_decode_attention_int8(q, kp, vp, ks, vs, self.block_tables, self.context_lens)
        if self.start == 0:                               # a prompt: the fresh k, v, exact
            return ops.attention(q, k, v)
        return ops.attention(q, *self.gather(layer, self.start + self.T, q.dtype))

    def gather(self, layer: int, end: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence's first `end` keys and values, dequantized: [end, KV, hd] each, in `dtype`."""
        n = -(-end // self.block_size)
        blocks = self.block_tables[0, :n].long()
        _, _, KV, bs, hd = self.k.shape
        out = []
        for pool, scales in ((self.k[layer], self.k_scale[layer]), (self.v[layer], self.v_scale[layer])):
            rows = dequantize_kv(pool[blocks], scales[blocks], dtype)          # [n, KV, bs, hd]
            out.append(rows.transpose(1, 2).reshape(n * bs, KV, hd)[:end])
        return out[0], out[1]
