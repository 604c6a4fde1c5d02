"""Day 17 -- pick the next token: greedy argmax, or a draw from softmax(logits / T) after top-k/top-p.

Lesson: notes/day_17_sampling.md        Check: pytest checkers/day_17

Both paths are the same reduction carrying (value, index):
- greedy: argmax of the logits, ties -> the lowest index (exactly torch.argmax);
- sampling: argmax of logits / T + Gumbel noise (the Gumbel-max trick: that argmax is distributed
  as softmax(logits / T)), with tokens outside the top-k / top-p nucleus masked to -inf.
A large vocabulary is cut into slices of `chunk` tokens, one block each (a 128k vocabulary keeps
about a hundred SMs busy instead of one); each block writes its slice's winner, and a second tiny
launch merges the winners of a row. Which tokens survive top-k/top-p is decided on the host with
torch.topk / torch.sort / cumsum and passed to the kernel as one threshold per row (the logit of
the last token kept).
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, int32

MAX_THREADS = 1024      # size of the shared reduction buffers; a block never has more threads
ITEMS_PER_LANE = 4      # auto layout and slices: give each lane about this many entries
NO_TOKEN = 2**31 - 1    # the index a lane starts from: loses every tie (fits the int32 scratch)
MAX_SLICES = 65535     # slices go on the grid's y axis, which has at most this many blocks


@cuda.jit(device=True)
def beats(v, i, best_v, best_i):
    """(v, i) wins over (best_v, best_i): larger value, or an equal value at a lower index."""
    # TODO(day 17): larger value wins; on an equal value the lower index wins.
    return False


@cuda.jit(device=True)
def block_argmax(vals, idxs, v, i, lane, base, lanes):
    """Tree-reduce each row's lanes [base, base + lanes) in shared memory; the winner (value, index)."""
    # TODO(day 17): store (v, i) at base + lane; then halve the active lanes each step, keeping the
    #   winner (beats) in the lower slot, with cuda.syncthreads() after every step.
    #   Return (vals[base], idxs[base]).
    return float32(0.0), 0


@cuda.jit
def argmax_kernel(logits, chunk, best_vals, best_idxs):
    """Block = (lanes, rows), grid = (row groups, slices): threadIdx.y picks a row, blockIdx.y the
    slice [s * chunk, (s + 1) * chunk) of it; the lanes stride over the slice and lane 0 writes
    the slice's winner to best_vals[row, s], best_idxs[row, s]."""
    # TODO(day 17): row = blockIdx.x * blockDim.y + threadIdx.y, slice s = blockIdx.y; each lane strides
    #   over tokens [s * chunk, min((s + 1) * chunk, n)) keeping its best (value, index) in float32
    #   (start from (-inf, NO_TOKEN)), then block_argmax; lane 0 writes best_vals[row, s] and
    #   best_idxs[row, s]. Threads of rows past the end still take part in the barriers.
    pass


@cuda.jit
def gumbel_argmax_kernel(logits, uniform, keep_from, inv_temperature, chunk, best_vals, best_idxs):
    """argmax_i of logits[i] / T - log(-log(u_i)) over the tokens with logits[i] >= keep_from[row],
    per slice of chunk tokens, laid out like argmax_kernel."""
    # TODO(day 17): like argmax_kernel, but token i scores x * inv_temperature - log(-log(u_i)) when
    #   x >= keep_from[row] and u_i > 0, else -inf (the Gumbel-max trick: argmax = a softmax draw).
    pass


@cuda.jit
def merge_kernel(best_vals, best_idxs, out):
    """out[row] = the index of the winner among the row's slice winners (ties -> lower index:
    the slices' own indices decide, not which slice came first). Layout like argmax_kernel."""
    # TODO(day 17): the same layout over the partials: each lane strides over p = lane, lane + lanes, ...
    #   < best_vals.shape[1], keeping the best (best_vals[row, p], best_idxs[row, p]) by beats, then
    #   block_argmax; lane 0 writes out[row].
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
           lanes: int | None = None, chunk: int | None = None) -> torch.Tensor:
    """Next token from logits [V] (-> 0-d int64) or [B, V] (-> [B]).

    temperature 0 = greedy (argmax, ties -> lowest index). Else logits / temperature, keep the
    top_k largest (0 = all), then the smallest set whose probability reaches top_p, and draw
    (reproducibly for a seeded `generator`). `lanes` threads share a row (power of two dividing
    block_size; None: picked from the vocab size); the other block_size // lanes go to other rows.
    Each block covers `chunk` tokens of a row (None: lanes * ITEMS_PER_LANE); more than one slice
    per row adds a second launch that merges the slices' winners. No host reads: capture-safe.
    Raise ValueError (one line) for logits that are not [V] / [B, V] with V >= 1, top_k < 0,
    top_p outside (0, 1], a bad lanes / block_size, or a chunk < 1 or so small that a row needs
    more than MAX_SLICES slices.
    """
    # TODO(day 17): validate; rows = logits as [B, V]; (lanes, per_block) = layout(V, block_size, lanes);
    #   chunk (None: lanes * ITEMS_PER_LANE), slices = cdiv(V, chunk). Partials best_vals [B, slices]
    #   float32 and best_idxs [B, slices] int64 (one slice: out itself, viewed [B, 1]). Launch
    #   grid (cdiv(B, per_block), slices), block (lanes, per_block); then, for more than one slice,
    #   merge_kernel with layout(slices, block_size, None). No host reads (the step is captured).
    raise NotImplementedError("Day 17: sample is not written yet -- edit days/day_17/sampling.py "
                              "(lesson: notes/day_17_sampling.md)")
