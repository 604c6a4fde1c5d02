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
    h = cuda.blockIdx.y
    kvh = h // group                                   # GQA: consecutive query heads share a KV head
    tid = cuda.threadIdx.x
    block_q = cuda.blockDim.x
    T, hd = q.shape[0], q.shape[2]
    S = k.shape[0]
    q0 = cuda.blockIdx.x * block_q
    r = q0 + tid
    pos = S - T + r                                    # causal, aligned to the end: sees keys 0..pos
    if r >= T:
        pos = -1                                       # a padding thread: loads and waits, sees nothing

    smem = cuda.shared.array(0, float32)
    k_off = hd * block_q
    v_off = k_off + block_k * hd
    for idx in range(tid, block_q * hd, block_q):      # neighbouring threads, neighbouring columns
        i = idx // hd
        c = idx - i * hd
        qv = float32(0.0)
        if q0 + i < T:
            qv = float32(q[q0 + i, h, c]) * scale      # fold the 1/sqrt(hd) into q once
        smem[c * block_q + i] = qv

    acc = cuda.local.array(MAX_HEAD_DIM, float32)      # this row's output, relative to the running max
    sc = cuda.local.array(MAX_BLOCK_K, float32)        # this row's scores for the current tile
    for c in range(hd):
        acc[c] = float32(0.0)
    m = float32(-math.inf)
    l = float32(0.0)

    last = min(q0 + block_q, T) - 1                    # the tile's last query row ...
    k_end = S - T + last + 1                           # ... sees keys 0 .. S - T + last: later tiles are skipped
    for k0 in range(0, k_end, block_k):
        n = min(block_k, S - k0)
        for idx in range(tid, n * hd, block_q):        # the K and V tiles, coalesced
            j = idx // hd
            c = idx - j * hd
            smem[k_off + idx] = float32(k[k0 + j, kvh, c])
            smem[v_off + idx] = float32(v[k0 + j, kvh, c])
        cuda.syncthreads()                             # Q and the tiles are complete before anyone reads them

        visible = min(n, pos - k0 + 1)                 # keys k0 .. pos of this tile (<= 0: none)
        if visible > 0:
            m_tile = float32(-math.inf)
            for j in range(visible):
                s = float32(0.0)
                for c in range(hd):
                    s += smem[c * block_q + tid] * smem[k_off + j * hd + c]
                sc[j] = s
                m_tile = max(m_tile, s)
            m_new = max(m, m_tile)                     # finite: every row sees key 0 in the first tile
            alpha = math.exp(m - m_new)                # 0 on the first tile (m = -inf), else <= 1
            l *= alpha
            for c in range(hd):
                acc[c] *= alpha
            for j in range(visible):
                p = math.exp(sc[j] - m_new)
                l += p
                for c in range(hd):
                    acc[c] += p * smem[v_off + j * hd + c]
            m = m_new
        cuda.syncthreads()                             # everyone is done with this tile before the next load

    if r < T:
        inv = float32(1.0) / l if l > 0 else float32(0.0)
        for c in range(hd):
            out[r, h, c] = acc[c] * inv


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_q: int = 32,
              block_k: int = 32) -> torch.Tensor:
    """Causal grouped-query flash attention, every head in one launch.

    q [T, H, hd], k and v [S, KV, hd] with H % KV == 0 and T <= S (any strides: the engine passes
    views of its KV cache). Query i sits at position S - T + i. Scale 1/sqrt(hd), fp32 math. One
    block of `block_q` threads per (tile of block_q queries, head), K/V tiles of `block_k` keys.
    Extra memory: shared tiles and per-thread registers only, nothing of size T x S.
    Returns [T, H, hd] in q's dtype.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"attention takes q [T, H, hd], k and v [S, KV, hd]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    T, H, hd = q.shape
    S, KV = k.shape[:2]
    if k.shape != (S, KV, hd) or v.shape != k.shape:
        raise ValueError(f"k and v must both be [S, KV, {hd}]; got {tuple(k.shape)} and {tuple(v.shape)}")
    if KV == 0 or H % KV:
        raise ValueError(f"{H} query heads cannot be split evenly over {KV} KV heads: H % KV must be 0")
    if T > S:
        raise ValueError(f"{T} queries but only {S} keys: every query needs its own key (T <= S)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"q, k, v must share one dtype, float32 or float16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not 0 < hd <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim {hd} is not supported: 1..{MAX_HEAD_DIM} (raise MAX_HEAD_DIM)")
    if not 0 < block_q <= 1024 or not 0 < block_k <= MAX_BLOCK_K:
        raise ValueError(f"block_q={block_q}, block_k={block_k}: use 1..1024 threads and 1..{MAX_BLOCK_K} keys per tile")
    shared_bytes = 4 * hd * (block_q + 2 * block_k)
    if shared_bytes > MAX_SHARED_BYTES:
        raise ValueError(f"tiles of block_q={block_q}, block_k={block_k} at head_dim {hd} need {shared_bytes} bytes "
                         f"of shared memory (> {MAX_SHARED_BYTES}): use smaller tiles")
    gpu.require_device(q, k, v)
    out = torch.empty(T, H, hd, dtype=q.dtype, device=q.device)
    if T and H:
        gpu.launch(flash_attention_kernel, (gpu.cdiv(T, block_q), H), block_q, q, k, v, out,
                   np.float32(1.0 / math.sqrt(hd)), H // KV, block_k, shared_bytes=shared_bytes)
    return out
