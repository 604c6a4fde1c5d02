"""Day 17 -- pick the next token: greedy argmax, or a draw from softmax(logits / T) after top-k/top-p.

Lesson: notes/day_17_sampling.md        Check: pytest checkers/day_17

Both paths are ONE block reduction carrying (value, index):
- greedy: argmax of the logits, ties -> the lowest index (exactly torch.argmax);
- sampling: argmax of logits / T + Gumbel noise (the Gumbel-max trick: that argmax is distributed
  as softmax(logits / T)), with tokens outside the top-k / top-p nucleus masked to -inf.
Which tokens survive top-k/top-p is decided on the host with torch.topk / torch.sort / cumsum and
passed to the kernel as one threshold per row (the logit of the last token kept).
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, int32

MAX_THREADS = 1024      # size of the shared reduction buffers; a block never has more threads
ITEMS_PER_LANE = 16     # auto layout: give each lane at least this many vocab entries


@cuda.jit(device=True)
def beats(v, i, best_v, best_i):
    """(v, i) wins over (best_v, best_i): larger value, or an equal value at a lower index."""
    # TODO(day 17): larger value wins; on an equal value the lower index wins.
    return False


@cuda.jit(device=True)
def block_argmax(vals, idxs, v, i, lane, base, lanes):
    """Tree-reduce each row's lanes [base, base + lanes) in shared memory; index of the winner."""
    # TODO(day 17): store (v, i) at base + lane; then halve the active lanes each step, keeping the
    #   winner (beats) in the lower slot, with cuda.syncthreads() after every step. Return idxs[base].
    return 0


@cuda.jit
def argmax_kernel(logits, out):
    """Block = (lanes, rows): threadIdx.y picks a row, its lanes stride over the vocab."""
    # TODO(day 17): row = blockIdx.x * blockDim.y + threadIdx.y; each lane strides over the vocab
    #   keeping its best (value, index) in float32 (start from (-inf, n)), then block_argmax;
    #   lane 0 writes out[row]. Threads of rows past the end still take part in the barriers.
    pass


@cuda.jit
def gumbel_argmax_kernel(logits, uniform, keep_from, inv_temperature, out):
    """argmax_i of logits[i] / T - log(-log(u_i)) over the tokens with logits[i] >= keep_from[row]."""
    # TODO(day 17): like argmax_kernel, but token i scores x * inv_temperature - log(-log(u_i)) when
    #   x >= keep_from[row] and u_i > 0, else -inf (the Gumbel-max trick: argmax = a softmax draw).
    pass


def keep_threshold(x: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Per row, the logit of the last token top-k/top-p keep (-inf: keep all). Host-side torch.

    Ranks by x / temperature like the reference; the returned value is in raw-logit units so the
    kernel's `x >= threshold` keeps exactly the ranked tokens (ties at the boundary are all kept).
    """
    raise NotImplementedError("Day 17: keep_threshold is not written yet -- edit days/day_17/sampling.py "
                              "(lesson: notes/day_17_sampling.md)")


def layout(vocab: int, block_size: int, lanes: int | None) -> tuple[int, int]:
    """(lanes per row, rows per block): enough lanes for the vocab, the rest of the block = rows."""
    if lanes is None:
        lanes = 1
        while lanes < block_size and lanes * ITEMS_PER_LANE < vocab:
            lanes *= 2
    if lanes < 1 or lanes & (lanes - 1) or block_size % lanes or block_size > MAX_THREADS:
        raise ValueError(f"lanes={lanes} must be a power of two dividing block_size={block_size} (<= {MAX_THREADS})")
    return lanes, block_size // lanes


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None, *, block_size: int = 256,
           lanes: int | None = None) -> torch.Tensor:
    """Next token from logits [V] (-> 0-d int64) or [B, V] (-> [B]).

    temperature 0 = greedy (argmax, ties -> lowest index). Else logits / temperature, keep the
    top_k largest (0 = all), then the smallest set whose probability reaches top_p, and draw
    (reproducibly for a seeded `generator`). `lanes` threads share a row (power of two dividing
    block_size; None: picked from the vocab size); the other block_size // lanes go to other rows.
    """
    raise NotImplementedError("Day 17: sample is not written yet -- edit days/day_17/sampling.py "
                              "(lesson: notes/day_17_sampling.md)")
