"""Day 09 -- embedding lookup: out[t] = table[ids[t]], a gather kernel.

Lesson: notes/day_09_embedding.md        Check: pytest checkers/day_09
"""
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda


@cuda.jit
def embedding_kernel(ids, table, out, hidden):
    """Block (t, chunk) copies one chunk of row ids[t] of the table into row t of out.

    blockIdx.x = token, blockIdx.y = which chunk of `hidden` columns; neighbouring threads
    read neighbouring columns of one table row, so the reads are coalesced.
    """
    # TODO(day 09): t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x; if c < hidden,
    # copy table[ids[t], c] into out[t, c].
    pass


def embedding(ids: torch.Tensor, table: torch.Tensor, *, block_size: int = 128) -> torch.Tensor:
    """Rows of `table` [vocab, hidden] picked by token `ids` [T] -> [T, hidden] in table's dtype.

    Ids are checked on the host before the launch: a kernel that reads row -1 or row vocab
    reads someone else's memory on a GPU and fails silently. Raise ValueError (one line) for
    ids that are not 1-D int32/int64, a table that is not 2-D, or any id < 0 or >= vocab.
    Launch a (T, ceil(hidden / block_size)) grid of `block_size` threads.
    """
    raise NotImplementedError("Day 09: embedding is not written yet -- edit days/day_09/embedding.py "
                              "(lesson: notes/day_09_embedding.md)")
