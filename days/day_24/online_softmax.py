"""Day 24 -- the online softmax: one pass keeps a running (max, sum) that rescales as it goes.

Lesson: notes/day_24_online_softmax.md        Check: pytest checkers/day_24
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

MAX_BLOCK = 1024


@cuda.jit(device=True)
def merge(m_a, l_a, m_b, l_b):
    """(max, sum) of the union of two parts: both sums rescaled to the larger max.

    A part that saw only -inf has (m, l) = (-inf, 0); when both have, the union does too
    (computing exp(-inf - -inf) would give NaN).
    """
    # TODO(day 24): m = the larger max; if it is -inf return (m, 0); else both sums rescaled to m, added.
    pass


@cuda.jit
def online_softmax_kernel(x, out):
    """Block `row`: each thread folds its strided elements into a running (m, l); a shared-memory
    tree merges the block's pairs with the same rule; one more pass writes exp(x - m) / l."""
    # TODO(day 24): each thread: (m, l) = (-inf, 0), then for its strided elements x:
    #   m_new = max(m, x); unless m_new is -inf: l = l * exp(m - m_new) + exp(x - m_new); m = m_new.
    # TODO(day 24): (m, l) into two shared arrays of MAX_BLOCK; a tree that merges pairs (barrier each
    #   level); everyone reads the pair at index 0; write exp(x - m) / l, or zeros where l == 0.
    pass


def online_softmax(x: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Softmax over the last dim of a 2-D float32/float16 tensor, in x's dtype, reading x twice
    (once for the running max and sum, once to write) instead of three times.

    One block of `block_size` threads (a power of two up to 1024) per row; a row that is all -inf
    gives zeros. A one-line ValueError unless x is 2-D float32/float16 and block_size is a power of
    two from 1 to 1024.
    """
    raise NotImplementedError("Day 24: online_softmax is not written yet -- edit days/day_24/online_softmax.py "
                              "(lesson: notes/day_24_online_softmax.md)")


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk: int = 16,
                      reverse: bool = False) -> torch.Tensor:
    """Causal GQA attention (the contract of shared.reference.attention) that never holds more
    than `chunk` keys' scores: per query row a running max m, sum l and output acc [hd], updated
    chunk by chunk with the online rescale. PyTorch ops per chunk: the flash algorithm in
    plain sight, before day 25 makes it a kernel.

    `reverse` walks the chunks last to first: the merge does not care about order, but early
    query rows then meet chunks they cannot see at all before any they can (m = -inf so far).

    A one-line ValueError unless q is [T, H, hd] and k and v are both [S, KV, hd] with q's head size
    hd, H is a multiple of KV (KV >= 1), T <= S and chunk >= 1.
    """
    # TODO(day 24): validate (one-line ValueErrors, like day 14's attention, plus chunk >= 1). Per head and
    # query row keep m = -inf, l = 0, acc = zeros(hd), all float32. For each chunk of keys (the last one may be
    # shorter): scores with the causal mask aligned to the end, m_new = max(m, chunk max),
    # alpha = exp(m - m_new), p = exp(s - m_new), l = l * alpha + sum(p), acc = acc * alpha + p @ v_chunk.
    # Where m_new is still -inf, subtract 0 instead. At the end acc / l, in q's dtype.
    raise NotImplementedError("Day 24: blocked_attention is not written yet -- edit days/day_24/online_softmax.py "
                              "(lesson: notes/day_24_online_softmax.md)")
