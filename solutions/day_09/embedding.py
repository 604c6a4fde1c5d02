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
    t = cuda.blockIdx.x
    c = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if c < hidden:                       # the last chunk runs past the end of the row
        out[t, c] = table[ids[t], c]


def embedding(ids: torch.Tensor, table: torch.Tensor, *, block_size: int = 128) -> torch.Tensor:
    """Rows of `table` [vocab, hidden] picked by token `ids` [T] -> [T, hidden] in table's dtype.

    Ids are checked on the host before the launch: a kernel that reads row -1 or row vocab
    reads someone else's memory on a GPU and fails silently. Raise ValueError (one line) for
    ids that are not 1-D int32/int64, a table that is not 2-D, or any id < 0 or >= vocab.
    Launch a (T, ceil(hidden / block_size)) grid of `block_size` threads.
    """
    if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"embedding: ids must be a 1-D int32/int64 tensor, got {tuple(ids.shape)} {ids.dtype}")
    if table.dim() != 2:
        raise ValueError(f"embedding: table must be 2-D [vocab, hidden], got shape {tuple(table.shape)}")
    gpu.require_device(ids, table)
    vocab, hidden = table.shape
    T = ids.shape[0]
    if T and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        bad = ids[(ids < 0) | (ids >= vocab)][0].item()
        raise ValueError(f"embedding: token id {bad} out of range for a vocabulary of {vocab} (valid: 0..{vocab - 1})")
    out = torch.empty(T, hidden, dtype=table.dtype, device=table.device)
    if T and hidden:
        gpu.launch(embedding_kernel, (T, gpu.cdiv(hidden, block_size)), block_size, ids, table, out, hidden)
    return out
