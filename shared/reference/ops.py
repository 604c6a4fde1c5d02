"""PyTorch reference for every kernel-level component: the oracle the checkers compare against
and the engine's fallback for any component whose day is not finished yet.

These signatures are the contract. A day that provides a name implements exactly this call.
All ops accept fp32 or fp16 tensors on any device and accumulate in fp32.
"""
from __future__ import annotations

import math

import torch

from shared.config import ModelConfig
from shared.q4 import Q4Weight, linear_q4
from shared.quant import QuantWeight


# ---- Phase 0 ---------------------------------------------------------------------------------
def vector_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out = a + b for 1-D tensors of equal length."""
    return a + b


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), computed in fp32, returned in x's dtype."""
    return torch.nn.functional.silu(x.float()).to(x.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (the core of SwiGLU); 2-D [rows, cols], returned in gate's dtype."""
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate.dtype)


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """[rows, cols] -> [rows] fp32 sum of each row."""
    return x.float().sum(dim=-1)


def row_max(x: torch.Tensor) -> torch.Tensor:
    """[rows, cols] -> [rows] fp32 max of each row."""
    return x.float().amax(dim=-1)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Stable softmax over the last dim of [rows, cols]; a row that is all -inf gives zeros."""
    xf = x.float()
    m = xf.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
    e = torch.exp(xf - m)
    s = e.sum(dim=-1, keepdim=True)
    return torch.where(s > 0, e / s, torch.zeros_like(e)).to(x.dtype)


def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y = x @ w.T; x [M, K], w [N, K] -> [M, N] (PyTorch's Linear layout)."""
    return (x.float() @ w.float().T).to(x.dtype)


# ---- Phases 1-2: the forward pass ------------------------------------------------------------
def embedding(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """ids [T] integer -> rows of table [vocab, hidden]. An id outside the table gives a zero row:
    nothing reads outside the table, and nothing reads the ids back to the host (the engine
    checks ids while they are still Python ints, before any launch)."""
    valid = (ids >= 0) & (ids < table.shape[0])
    rows = table[torch.where(valid, ids, 0).long()]
    return torch.where(valid[:, None], rows, torch.zeros((), dtype=table.dtype, device=table.device))


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) in fp32, cast to x's dtype, times weight."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """y = x @ w.T; x [T, in], w [out, in] -> [T, out]. No bias (Llama has none). w may be a
    QuantWeight (days 40-41): then day 41's oracle, dequantize and multiply in float32; one whose
    activations are int8 (W8A8, day 43): x quantized per token, an exact integer product, then the scales.
    A Q4Weight (day 47, 4-bit Q4_1 blocks): dequantize (d * nibble + m) and multiply in float32."""
    if isinstance(w, Q4Weight):
        return linear_q4(x, w)
    if isinstance(w, QuantWeight):
        from shared.reference.quant import linear_w8a8, linear_w8a16
        return linear_w8a8(x, w) if w.int8_activations else linear_w8a16(x, w)
    return matmul(x, w)


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] fp32 from rope_theta, with llama3 scaling if set."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> None:
    """Rotate q [T, H, hd] and k [T, KV, hd] IN PLACE by their positions [T].

    HF pairing ("rotate half"): element i pairs with i + hd/2, angle = position * inv_freq[i].
    """
    angles = positions.float()[:, None] * inv_freq.float().to(positions.device)[None, :]  # [T, hd/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    for t in (q, k):
        half = t.shape[-1] // 2
        x1, x2 = t[..., :half].float(), t[..., half:].float()
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        t.copy_(out.to(t.dtype))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal grouped-query attention.

    q [T, H, hd], k and v [S, KV, hd] with H % KV == 0 and T <= S. Query i sits at position
    S - T + i and sees keys 0..S-T+i (the mask is aligned to the end). Scale 1/sqrt(hd).
    Returns [T, H, hd] in q's dtype.
    """
    T, H, hd = q.shape
    S, KV, _ = k.shape
    g = H // KV
    qf = q.float().transpose(0, 1)                                   # [H, T, hd]
    kf = k.float().transpose(0, 1).repeat_interleave(g, dim=0)       # [H, S, hd]
    vf = v.float().transpose(0, 1).repeat_interleave(g, dim=0)
    scores = qf @ kf.transpose(1, 2) / math.sqrt(hd)                 # [H, T, S]
    qpos = torch.arange(S - T, S, device=q.device)[:, None]
    kpos = torch.arange(S, device=q.device)[None, :]
    scores = scores.masked_fill(kpos > qpos, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vf                          # [H, T, hd]
    return out.transpose(0, 1).to(q.dtype).contiguous()


# ---- Phase 3: generation ---------------------------------------------------------------------
def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token from logits [V] (-> 0-d int64) or [B, V] (-> [B]).

    temperature 0 = greedy (argmax, ties -> lowest index). Else logits / temperature, keep the
    top_k largest (0 = all), then the smallest set whose probability reaches top_p, and draw.
    """
    x = logits.float()
    if temperature <= 0:
        return torch.argmax(x, dim=-1)
    x = x / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = probs.cumsum(-1) - probs          # mass of the tokens ranked above
        drop = before >= top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, order, sorted_x)
    probs = torch.softmax(x, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.multinomial(flat.cpu() if generator is not None and generator.device.type == "cpu" else flat,
                            1, generator=generator).to(logits.device)
    return out.reshape(probs.shape[:-1])


def kv_write(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             positions: torch.Tensor) -> None:
    """Store k, v [T, KV, hd] into one layer's cache [KV, max_seq, hd] at positions [T]."""
    idx = positions.long()
    k_cache[:, idx] = k.transpose(0, 1).to(k_cache.dtype)
    v_cache[:, idx] = v.transpose(0, 1).to(v_cache.dtype)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_len: torch.Tensor) -> torch.Tensor:
    """One new query per head over the cache: q [H, hd], caches [KV, max_seq, hd].

    cache_len: int32 tensor [1] on the device = how many positions are valid (the new token
    included). A tensor, not an int, so a CUDA graph can replay the step at any length (day 23):
    the length masks the scores on the device and is never read back to the host. Returns [H, hd].
    """
    H, hd = q.shape
    KV, S, _ = k_cache.shape
    kf = k_cache.float().repeat_interleave(H // KV, dim=0)              # [H, S, hd]
    vf = v_cache.float().repeat_interleave(H // KV, dim=0)
    scores = (kf @ q.float()[:, :, None])[:, :, 0] / math.sqrt(hd)      # [H, S]
    valid = torch.arange(S, device=q.device)[None, :] < cache_len.reshape(1, 1).to(q.device)
    scores = scores.masked_fill(~valid, float("-inf"))
    vf = vf.masked_fill(~valid[:, :, None], 0.0)                        # 0 * garbage in the tail stays 0
    return (torch.softmax(scores, dim=-1)[:, None, :] @ vf)[:, 0].to(q.dtype)


# ---- Phase 4: flash attention -----------------------------------------------------------------
def online_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of [rows, cols], the same numbers as `softmax` (a row that is all
    -inf gives zeros). Day 24 computes it with one pass for the running max and sum (Milakov and
    Gimelshein 2018) instead of two; the result is the same up to rounding."""
    return softmax(x)


# ---- Phase 5: the paged KV cache ---------------------------------------------------------------
def paged_kv_write(k_pool: torch.Tensor, v_pool: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Scatter k, v [T, KV, hd] into one layer's pools [num_blocks, KV, block_size, hd].

    slot_mapping: int32 [T] on the device; token t goes to block slot // block_size, offset
    slot % block_size. A slot < 0 is padding: that token is not written.
    """
    # No boolean-mask indexing: it reads the mask back to the host (no CUDA graph, a sync per call).
    # Instead a padding token repeats the first real token's write (same slot, same values, so the
    # duplicate index is harmless); with no real token at all, every write puts back what was there.
    bs = k_pool.shape[2]
    slots = slot_mapping.long()
    keep = slots >= 0
    first = torch.argmax(keep.to(torch.int32))                       # first real token (0 if none)
    src = torch.where(keep, torch.arange(len(slots), device=slots.device), first)
    target = slots[src].clamp(min=0)
    blocks, offsets = target // bs, target % bs
    real = keep[src][:, None, None]
    for pool, new in ((k_pool, k), (v_pool, v)):
        pool[blocks, :, offsets] = torch.where(real, new[src].to(pool.dtype), pool[blocks, :, offsets])


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """One new query per sequence and head over that sequence's paged cache.

    q [B, H, hd]; pools [num_blocks, KV, block_size, hd]; block_tables int32 [B, max_blocks]
    (sequence b's position p lives in block block_tables[b, p // block_size], offset
    p % block_size; entries past its last block are ignored); context_lens int32 [B] = how many
    positions of sequence b are valid (its new token included; 0 gives zeros). Both stay on the
    device, so a CUDA graph can replay the step. Returns [B, H, hd] in q's dtype.
    """
    B, H, hd = q.shape
    _, KV, bs, _ = k_pool.shape
    max_blocks = block_tables.shape[1]
    S = max_blocks * bs
    pos = torch.arange(S, device=q.device)
    valid = pos[None, :] < context_lens.reshape(B, 1).long().to(q.device)              # [B, S]
    table = block_tables.long().clamp(0, k_pool.shape[0] - 1)                          # unused entries: any block
    blocks = table[:, pos // bs]                                                       # [B, S]
    k = k_pool[blocks, :, pos % bs].float().transpose(1, 2)                           # [B, KV, S, hd]
    v = v_pool[blocks, :, pos % bs].float().transpose(1, 2)
    k = k.repeat_interleave(H // KV, dim=1)                                            # [B, H, S, hd]
    v = v.repeat_interleave(H // KV, dim=1).masked_fill(~valid[:, None, :, None], 0.0)
    scores = (k @ q.float()[..., None])[..., 0] / math.sqrt(hd)                        # [B, H, S]
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    m = scores.amax(dim=-1, keepdim=True)
    e = torch.exp(scores - torch.where(torch.isinf(m), torch.zeros_like(m), m))
    s = e.sum(dim=-1, keepdim=True)
    p = torch.where(s > 0, e / s, torch.zeros_like(e))
    return (p[:, :, None, :] @ v)[:, :, 0].to(q.dtype)
