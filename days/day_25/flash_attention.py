"""Day 25 -- flash attention: tiles of K and V stream through shared memory, each query row keeps
a running (max, sum, output) and never a row of scores.

Lesson: notes/day_25_flash_attention.md        Check: pytest checkers/day_25
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_HEAD_DIM = 128             # a thread's output row lives in a local array: a compile-time size
MAX_BLOCK_K = 64               # a thread's scores for one K tile, likewise
MAX_SHARED_BYTES = 48 * 1024   # dynamic shared memory a block may ask for without opting in
LOCAL_MEMORY_BY_DESIGN = True   # acc and the scores are local arrays indexed at run time: slow, on purpose
                                # (day 26 keeps them in registers); the compile check allows the frame


@cuda.jit
def flash_attention_kernel(q, k, v, out, scale, group, block_k):
    """Block (query tile x, head h); thread i owns query row r = x * blockDim + i, at position
    S - T + r. KV head h // group.

    Dynamic shared memory (fp32): [ Q tile transposed (hd x block_q) | K tile | V tile (block_k x hd) ].
    Q is stored transposed so that the threads, each reading its own row at the same column c,
    touch consecutive words (no bank conflicts); K and V rows are read by all threads at once
    (a broadcast).
    """
    # TODO(day 25): h, kv head h // group, this thread's row r = blockIdx.x * blockDim.x + tid at position
    # S - T + r (a thread with r >= T still loads tiles and reaches every barrier, but sees no key).
    # TODO(day 25): smem = cuda.shared.array(0, float32): stage the Q tile, scaled, transposed
    # (smem[c * block_q + i]); acc = cuda.local.array(MAX_HEAD_DIM, float32) of zeros, m = -inf, l = 0.
    # TODO(day 25): for each K/V tile k0 = 0, block_k, ... up to the tile's last row's position (skip the rest):
    # load K and V (fp32) after the Q tile, barrier; scores of your visible keys into a local array, their max;
    # m_new = max(m, tile max), rescale l and acc by exp(m - m_new), add p = exp(s - m_new) and p * v; barrier.
    # TODO(day 25): rows r < T write acc / l.
    pass


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_q: int = 32,
              block_k: int = 32) -> torch.Tensor:
    """Causal grouped-query flash attention, every head in one launch.

    q [T, H, hd], k and v [S, KV, hd] with H % KV == 0 and T <= S (any strides: the engine passes
    views of its KV cache). Query i sits at position S - T + i. Scale 1/sqrt(hd), fp32 math. One
    block of `block_q` threads per (tile of block_q queries, head), K/V tiles of `block_k` keys.
    Extra memory: shared tiles and per-thread registers only, nothing of size T x S.
    Returns [T, H, hd] in q's dtype.
    """
    raise NotImplementedError("Day 25: attention is not written yet -- edit days/day_25/flash_attention.py "
                              "(lesson: notes/day_25_flash_attention.md)")
