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
    raise NotImplementedError("Day 12: rope_frequencies is not written yet -- edit days/day_12/rope.py "
                              "(lesson: notes/day_12_rope.md)")


@cuda.jit
def rope_kernel(x, positions, inv_freq, half):
    """Block (t, h) rotates head h of token t in place; thread i owns the pair (i, i + half).

    No two threads touch the same element, so no barrier is needed.
    """
    # TODO(day 12): t = blockIdx.x, h = blockIdx.y, pos = float32(positions[t]). For each pair
    # i = threadIdx.x, threadIdx.x + blockDim.x, ... < half: angle = pos * inv_freq[i] (fp32),
    # c, s = cos, sin; x1 = x[t, h, i], x2 = x[t, h, i + half] (as float32);
    # write x1*c - x2*s to position i and x2*c + x1*s to position i + half.
    pass


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
         *, block_size: int = 64) -> None:
    """Rotate q [T, H, hd] and k [T, KV, hd] in place by their positions [T] (any values).

    Rotate-half pairing: element i pairs with i + hd/2 (not 2i with 2i+1). Raise ValueError
    (one line) for shapes that do not fit: head dims that differ or are odd, positions that
    are not [T] integers, inv_freq that is not [hd/2]. One block per (token, head).
    """
    raise NotImplementedError("Day 12: rope is not written yet -- edit days/day_12/rope.py "
                              "(lesson: notes/day_12_rope.md)")
