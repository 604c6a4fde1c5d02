"""Day 12 -- rotary position embedding (RoPE), the Hugging Face way.

rope_frequencies runs once on the host; rope runs every layer on the GPU: it rotates each
pair (i, i + hd/2) of every q and k head by the angle position * inv_freq[i].

Lesson: notes/day_12_rope.md        Check: pytest checkers/day_12
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

from shared.config import ModelConfig


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """inv_freq [head_dim // 2] fp32: theta^(-2i/d), then llama3 scaling if the config has it.

    Computed in fp32 exactly as transformers does: at position 100000 one ulp of inv_freq moves
    the angle by ~0.01 rad, so these values must match HF's bit for bit. Host code: it runs once.
    """
    d = config.head_dim
    if d % 2:
        raise ValueError(f"rope_frequencies: head_dim must be even, got {d}")
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    # llama3: keep high frequencies (short wavelengths), divide low ones by `factor`,
    # and blend smoothly in between.
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


@cuda.jit
def rope_kernel(x, positions, inv_freq, half):
    """Block (t, h) rotates head h of token t in place; thread i owns the pair (i, i + half).

    No two threads touch the same element, so no barrier is needed.
    """
    t = cuda.blockIdx.x
    h = cuda.blockIdx.y
    pos = float32(positions[t])
    for i in range(cuda.threadIdx.x, half, cuda.blockDim.x):
        angle = pos * inv_freq[i]                     # fp32, as HF
        c = math.cos(angle)
        s = math.sin(angle)
        x1 = float32(x[t, h, i])
        x2 = float32(x[t, h, i + half])
        x[t, h, i] = x1 * c - x2 * s
        x[t, h, i + half] = x2 * c + x1 * s


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
         *, block_size: int = 64) -> None:
    """Rotate q [T, H, hd] and k [T, KV, hd] in place by their positions [T] (any values).

    Rotate-half pairing: element i pairs with i + hd/2 (not 2i with 2i+1). Raise ValueError
    (one line) for shapes that do not fit: head dims that differ or are odd, positions that
    are not [T] integers, inv_freq that is not [hd/2]. One block per (token, head).
    """
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"rope: need q [T, H, hd] and k [T, KV, hd], got {tuple(q.shape)} and {tuple(k.shape)}")
    T, _, hd = q.shape
    if hd % 2:
        raise ValueError(f"rope: head_dim must be even to split into halves, got {hd}")
    if positions.shape != (T,) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"rope: positions must be int32/int64 [T={T}], got {tuple(positions.shape)} {positions.dtype}")
    if inv_freq.shape != (hd // 2,):
        raise ValueError(f"rope: inv_freq must be [head_dim // 2] = [{hd // 2}], got {tuple(inv_freq.shape)}")
    gpu.require_device(q, k)
    positions = positions.to(q.device)
    inv_freq = inv_freq.to(device=q.device, dtype=torch.float32)
    for x in (q, k):
        if x.numel():
            gpu.launch(rope_kernel, (T, x.shape[1]), block_size, x, positions, inv_freq, hd // 2)
