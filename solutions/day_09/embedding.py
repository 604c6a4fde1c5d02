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
    read neighbouring columns of one table row, so the reads are coalesced. An id outside
    0..vocab-1 gives a zero row: the kernel never reads outside the table.
    """
    t = cuda.blockIdx.x
    c = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if c < hidden:                       # the last chunk runs past the end of the row
        row = ids[t]
        if 0 <= row < table.shape[0]:    # the bounds guard for the data, not just the grid
            out[t, c] = table[row, c]
        else:
            out[t, c] = 0


def embedding(ids: torch.Tensor, table: torch.Tensor, *, block_size: int = 128) -> torch.Tensor:
    """Rows of `table` [vocab, hidden] picked by token `ids` [T] -> [T, hidden] in table's dtype.

    Nothing here reads the ids back to the host (no .item(), no int(ids.min())): that would wait
    for the GPU on every decode step and break CUDA-graph capture (day 23). The engine checks
    ids while they are still Python ints; the kernel guards the table's bounds, writing a zero
    row for an id < 0 or >= vocab, so a bad id never reads someone else's memory.
    Raise ValueError (one line) for ids that are not 1-D int32/int64 or a table that is not 2-D.
    Launch a (T, ceil(hidden / block_size)) grid of `block_size` threads.
    """
    if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"embedding: ids must be a 1-D int32/int64 tensor, got {tuple(ids.shape)} {ids.dtype}")
    if table.dim() != 2:
        raise ValueError(f"embedding: table must be 2-D [vocab, hidden], got shape {tuple(table.shape)}")
    gpu.require_device(ids, table)
    vocab, hidden = table.shape
    T = ids.shape[0]
    out = torch.empty(T, hidden, dtype=table.dtype, device=table.device)
    if T and hidden:
        gpu.launch(embedding_kernel, (T, gpu.cdiv(hidden, block_size)), block_size, ids, table, out, hidden)
    return out
