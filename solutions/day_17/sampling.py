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
    return v > best_v or (v == best_v and i < best_i)


@cuda.jit(device=True)
def block_argmax(vals, idxs, v, i, lane, base, lanes):
    """Tree-reduce each row's lanes [base, base + lanes) in shared memory; the winner (value, index)."""
    vals[base + lane] = v
    idxs[base + lane] = i
    cuda.syncthreads()
    half = lanes // 2
    while half > 0:                       # every thread of the block takes the same steps
        if lane < half:
            ov, oi = vals[base + lane + half], idxs[base + lane + half]
            if beats(ov, oi, vals[base + lane], idxs[base + lane]):
                vals[base + lane] = ov
                idxs[base + lane] = oi
        cuda.syncthreads()                # the next step reads what this one wrote
        half //= 2
    return vals[base], idxs[base]


@cuda.jit
def argmax_kernel(logits, chunk, best_vals, best_idxs):
    """Block = (lanes, rows), grid = (row groups, slices): threadIdx.y picks a row, blockIdx.y the
    slice [s * chunk, (s + 1) * chunk) of it; the lanes stride over the slice and lane 0 writes
    the slice's winner to best_vals[row, s], best_idxs[row, s]."""
    lane, lanes = cuda.threadIdx.x, cuda.blockDim.x
    row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    part = cuda.blockIdx.y
    vals = cuda.shared.array(MAX_THREADS, float32)
    idxs = cuda.shared.array(MAX_THREADS, int32)
    n = logits.shape[1]
    start = part * chunk
    stop = min(start + chunk, n)
    best_v, best_i = float32(-math.inf), NO_TOKEN    # loses every tie, even to -inf
    if row < logits.shape[0]:
        for i in range(start + lane, stop, lanes):
            v = float32(logits[row, i])
            if beats(v, i, best_v, best_i):
                best_v, best_i = v, i
    win_v, win_i = block_argmax(vals, idxs, best_v, best_i, lane, cuda.threadIdx.y * lanes, lanes)
    if row < logits.shape[0] and lane == 0:
        best_vals[row, part] = win_v
        best_idxs[row, part] = win_i


@cuda.jit
def gumbel_argmax_kernel(logits, uniform, keep_from, inv_temperature, chunk, best_vals, best_idxs):
    """argmax_i of logits[i] / T - log(-log(u_i)) over the tokens with logits[i] >= keep_from[row],
    per slice of chunk tokens, laid out like argmax_kernel."""
    lane, lanes = cuda.threadIdx.x, cuda.blockDim.x
    row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    part = cuda.blockIdx.y
    vals = cuda.shared.array(MAX_THREADS, float32)
    idxs = cuda.shared.array(MAX_THREADS, int32)
    n = logits.shape[1]
    start = part * chunk
    stop = min(start + chunk, n)
    best_v, best_i = float32(-math.inf), NO_TOKEN
    if row < logits.shape[0]:
        floor = float32(keep_from[row])
        for i in range(start + lane, stop, lanes):
            x = float32(logits[row, i])
            v = float32(-math.inf)
            u = float32(uniform[row, i])
            if x >= floor and u > float32(0.0):
                v = x * inv_temperature - math.log(-math.log(u))
            if beats(v, i, best_v, best_i):
                best_v, best_i = v, i
    win_v, win_i = block_argmax(vals, idxs, best_v, best_i, lane, cuda.threadIdx.y * lanes, lanes)
    if row < logits.shape[0] and lane == 0:
        best_vals[row, part] = win_v
        best_idxs[row, part] = win_i


@cuda.jit
def merge_kernel(best_vals, best_idxs, out):
    """out[row] = the index of the winner among the row's slice winners (ties -> lower index:
    the slices' own indices decide, not which slice came first). Layout like argmax_kernel."""
    lane, lanes = cuda.threadIdx.x, cuda.blockDim.x
    row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    vals = cuda.shared.array(MAX_THREADS, float32)
    idxs = cuda.shared.array(MAX_THREADS, int32)
    best_v, best_i = float32(-math.inf), NO_TOKEN
    if row < best_vals.shape[0]:
        for p in range(lane, best_vals.shape[1], lanes):
            v, i = best_vals[row, p], best_idxs[row, p]
            if beats(v, i, best_v, best_i):
                best_v, best_i = v, i
    win_v, win_i = block_argmax(vals, idxs, best_v, best_i, lane, cuda.threadIdx.y * lanes, lanes)
    if row < best_vals.shape[0] and lane == 0:
        out[row] = win_i


def keep_threshold(x: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Per row, the logit of the last token top-k/top-p keep (-inf: keep all). Host-side torch.

    Ranks by x / temperature like the reference; the returned value is in raw-logit units so the
    kernel's `x >= threshold` keeps exactly the ranked tokens (ties at the boundary are all kept).
    """
    rows, vocab = x.shape
    scaled = x / temperature
    if top_k and top_k < vocab:
        ranked, order = torch.topk(scaled, top_k, dim=-1)             # sorted, largest first
    elif top_p < 1.0:
        ranked, order = torch.sort(scaled, dim=-1, descending=True)
    else:
        return torch.full((rows,), -math.inf, device=x.device)
    count = torch.full((rows, 1), ranked.shape[-1], device=x.device)
    if top_p < 1.0:
        probs = torch.softmax(ranked, dim=-1)
        before = probs.cumsum(-1) - probs                               # mass ranked above each token
        count = (before < top_p).sum(-1, keepdim=True)                  # >= 1: the top token stays
    last = order.gather(-1, count - 1)
    return x.gather(-1, last).squeeze(-1).contiguous()


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
    if logits.dim() not in (1, 2) or logits.shape[-1] == 0:
        raise ValueError(f"sample takes logits [V] or [B, V] with V >= 1, got shape {tuple(logits.shape)}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample: need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    gpu.require_device(logits)
    rows = logits.reshape(-1, logits.shape[-1])
    B, V = rows.shape
    lanes, per_block = layout(V, block_size, lanes)
    chunk = lanes * ITEMS_PER_LANE if chunk is None else chunk
    if chunk < 1 or gpu.cdiv(V, chunk) > MAX_SLICES:
        raise ValueError(f"sample: chunk must be >= 1 and cover the vocabulary ({V}) in at most "
                         f"{MAX_SLICES} slices, got chunk={chunk}")
    slices = gpu.cdiv(V, chunk)
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    if B == 0:
        return out.reshape(logits.shape[:-1])
    best_vals = torch.empty(B, slices, dtype=torch.float32, device=logits.device)
    # one slice: its winner is the answer, written straight into out
    best_idxs = out.view(B, 1) if slices == 1 else torch.empty(B, slices, dtype=torch.int64, device=logits.device)
    grid, block = (gpu.cdiv(B, per_block), slices), (lanes, per_block)
    if temperature <= 0:
        gpu.launch(argmax_kernel, grid, block, rows, chunk, best_vals, best_idxs)
    else:
        floor = keep_threshold(rows.float(), temperature, top_k, top_p)
        where = generator.device if generator is not None else logits.device
        uniform = torch.rand(rows.shape, generator=generator, device=where).to(logits.device)
        gpu.launch(gumbel_argmax_kernel, grid, block, rows, uniform, floor, np.float32(1.0 / temperature), chunk,
                   best_vals, best_idxs)
    if slices > 1:
        merge_lanes, merge_rows = layout(slices, block_size, None)
        gpu.launch(merge_kernel, gpu.cdiv(B, merge_rows), (merge_lanes, merge_rows), best_vals, best_idxs, out)
    return out.reshape(logits.shape[:-1])
