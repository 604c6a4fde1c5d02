"""Day 26 -- flash attention made fast: register tiles, 16-byte loads, causal tile skipping.

The same contract as day 25 (shared/reference/ops.py `attention`), the same online softmax; what
changes is who computes what. One block of (tile / 4) * G threads per (tile of queries, head):
the block stages Q^T, K^T and V tiles in shared memory as fp32, and every thread keeps a 4 x TK
register tile of the scores and a 4 x TD register tile of the output, so each value it reads
from shared memory feeds 4 or 8 multiply-adds instead of one.

For fp16 on a GPU a second kernel does the two matrix products on tensor cores (PTX mma.sync
from shared/runtime/mma.py): one warp per 16 queries, the scores stay in the mma's fp32
fragments, and rounded to fp16 pairs they are the A operand of P V, so P never leaves registers.

Lesson: notes/day_26_flash_fast.md        Check: pytest checkers/day_26
"""
import math

import numpy as np
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32, uint32

from shared.runtime.vector_loads import load8, load8_wide
from shared.runtime.mma import load8_pairs, load8_pairs_wide, mma_f16, pack_f16

WARP = 32
FULL_MASK = 0xFFFFFFFF
TQ = 4                      # queries per thread: one 16-byte shared load gives all four
MAX_GROUP = 8               # at most 8 threads share a row of the tile (a shuffle group in one warp)
SHARED_FLOATS = 12 * 1024   # 48 KiB of fp32 per block: Q^T, K^T (reused for P^T) and V, D x tile each
TILES = (64, 32, 16)        # queries = keys per tile, largest first
TC_TILES = (128, 64, 32, 16)   # the tensor-core kernel: queries per block, 16 per warp
TC_MAX_D = 128              # the tensor-core kernel keeps D / 2 output values per thread in registers
ALIGN = None if gpu.SIM else 16   # shared rows are read 16 bytes at a time (the simulator has no alignment)


# ---- given: a 16-byte shared-memory load and a butterfly shuffle ---------------------------------------
if gpu.SIM:
    import threading
    _first_use = threading.Lock()

    @cuda.jit(device=True)
    def load4(a, i, j):
        """a[i, j : j + 4] as four float32 values (the simulator reads them one by one)."""
        return a[i, j], a[i, j + 1], a[i, j + 2], a[i, j + 3]

    @cuda.jit(device=True)
    def shfl_xor(v, lanes):
        """Lane i gets lane (i ^ lanes)'s v. The simulator has no shuffles: shared memory and two
        barriers stand in, so EVERY thread of the block must call it."""
        with _first_use:     # the simulator's cuda.shared.array is not thread-safe on first use
            buf = cuda.shared.array(1024, float32)
        tid = cuda.threadIdx.x
        buf[tid] = v
        cuda.syncthreads()
        got = buf[tid ^ lanes]
        cuda.syncthreads()
        return got

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    @intrinsic
    def load4(typingctx, a, i, j):
        """a[i, j : j + 4] of a float32 array in ONE 16-byte load (PTX ld.v4.f32). The caller
        guarantees the address is a multiple of 16 bytes: j % 4 == 0 and rows of 16-byte multiples
        in an array declared with alignment=16. Nothing here checks it."""
        if a.dtype != types.float32:
            return None
        sig = types.UniTuple(types.float32, 4)(a, i, j)

        def codegen(context, builder, sig, args):
            aty = sig.args[0]
            arr = context.make_array(aty)(context, builder, args[0])
            idx = [context.cast(builder, x, t, types.intp) for x, t in zip(args[1:], sig.args[1:])]
            ptr = cgutils.get_item_pointer(context, builder, aty, arr, idx, wraparound=False)
            vec = builder.load(builder.bitcast(ptr, ir.VectorType(ir.FloatType(), 4).as_pointer()), align=16)
            values = [builder.extract_element(vec, ir.Constant(ir.IntType(32), e)) for e in range(4)]
            return context.make_tuple(builder, sig.return_type, values)

        return sig, codegen

    @cuda.jit(device=True)
    def shfl_xor(v, lanes):
        return cuda.shfl_xor_sync(FULL_MASK, v, lanes)


# ---- the kernel ----------------------------------------------------------------------------------------
def groups_for(tile: int) -> int:
    """G: how many threads share a row of queries (each takes tile / G keys of it)."""
    return min(MAX_GROUP, tile // 4)


def make_flash_kernel(D: int, TILE: int, load):
    """The kernel for head_dim D and TILE x TILE tiles, reading global memory with `load`
    (load8_wide or load8). Every size is a compile-time constant of this closure, so the
    shared arrays can be declared and LLVM can unroll the register-tile loops."""
    G = groups_for(TILE)    # threads per row group
    TK = TILE // G          # keys per thread in a score tile
    TD = D // G             # output dims per thread
    TB = max(TK, TD)

    @cuda.jit
    def flash_kernel(q, k, v, out, group, scale):
        """Block (x, h): queries q_start .. q_start + TILE - 1 of head h (KV head h // group).

        Thread (r, c) = divmod(tid, G) owns queries q_start + 4r .. + 3, keys c*4 + j*4G + (0..3)
        of every key tile, and output dims c*4 + j*4G + (0..3): all 4-wide runs, so each shared
        read is one 16-byte load and the G threads of a row read 4G consecutive floats."""
        # TODO(day 26): declare the shared tiles qt, kt (D x TILE) and vs (TILE x D) as float32 with
        # alignment=ALIGN, and the register tiles s (TQ x TK), o (TQ x TD), m, l (TQ), a (TQ), b (TB)
        # with cuda.local.array. r, c = divmod(tid, G); q_start from the reversed blockIdx.x; h =
        # blockIdx.y reads KV head h // group; offset = S - T.
        # Stage Q^T * scale (zeros past T) with `load`; m = -inf, l = 0, o = 0.
        # For each key tile k_start < min(S, offset + q_start + TILE): barrier; stage K^T and V
        # (zeros past S); barrier; s = Q K^T with load4 (4 queries x TK keys per step d); mask the
        # tiles that cross the diagonal; online softmax per row (max over the G threads with
        # shfl_xor, rescale l and o by exp(m_old - m_new)); barrier; write P^T into kt; barrier;
        # o += P V with load4. Finally add each row's l over the G threads, divide, store rows < T.
        pass

    return flash_kernel


# ---- the tensor-core kernel ----------------------------------------------------------------------------
def tc_keys(D: int, tile: int) -> int:
    """Keys per tile of the tensor-core kernel: a thread keeps KEYS / 2 scores, D / 2 outputs and
    D / 4 words of Q in registers, so a larger head_dim takes fewer keys at a time (measured on an
    H100: at hd 128 with 128-query blocks 32 keys still spill a few bytes, and are faster than 16)."""
    return min(tile, 64 if D <= 64 else 32)


def make_tc_kernel(D: int, TILE: int, KEYS: int, load):
    """FlashAttention-2 on tensor cores for fp16: TILE queries per block, one warp per 16 of
    them, KEYS keys per tile; `load` is load8_pairs_wide or load8_pairs. Shared memory holds
    fp16 pairs (uint32 words); rows are padded by 4 words so that the 8 lanes reading one
    column of a fragment hit 8 different bank groups."""
    WARPS = TILE // 16
    ROWS = max(TILE, KEYS)   # rows of the Q / K tile
    KW = D // 2 + 4          # words per row of the Q / K tile: [row][d pair]
    VW = KEYS // 2 + 4       # words per row of the V^T tile: [d][key pair]
    NK = KEYS // 8           # 8-key column blocks of the score tile
    ND = D // 8              # 8-dim column blocks of the output
    KD = D // 16             # 16-wide steps along d (Q K^T)
    KK = KEYS // 16          # 16-wide steps along the keys (P V)

    @cuda.jit
    def tc_kernel(q, k, v, out, group, scale_log2):
        """Block (x, h): queries q_start .. q_start + TILE - 1 of head h. Warp w owns rows
        16w .. 16w + 15 of the tile; lane (g, t) = divmod(lane, 4) holds rows 16w + g and
        16w + g + 8 of the score and output fragments (columns 2t, 2t + 1 of each 8-block)."""
        # TODO(day 26): shared uint32 tiles kw (ROWS x KW: Q, then each K tile, as [row][d pair])
        # and vt (D x VW: V^T, word p of row d = keys 2p, 2p + 1 of dim d), alignment=ALIGN;
        # registers qa (KD x 4 words), s (NK x 4), o (ND x 4), m and l (2: rows r0 and r0 + 8).
        # Stage Q with `load` (four packed pairs per 8 dims; zeros past T), barrier, read Q's A
        # fragments once (module docstring of shared/runtime/mma.py: a0 = row r0, word 8ks + t;
        # a1 = row r0 + 8; a2, a3 = word 8ks + 4 + t). m = -inf, l = 0, o = 0.
        # Per tile of KEYS keys up to min(S, offset + q_start + TILE): barrier; stage K (zeros past
        # S) and V^T (swap the halves of two keys' words: (x & 0xFFFF) | (y << 16), (x >> 16) |
        # (y & 0xFFFF0000)); barrier; s = Q K^T with mma_f16 per 8-key block n (B words
        # kw[8n + g, 8ks + t] and kw[8n + g, 8ks + 4 + t]); mask on tiles that cross the diagonal
        # (c0, c1 are row r0, c2, c3 row r0 + 8; key k_start + 8n + 2t + e % 2); online softmax per
        # row in base 2 (max over the row's 4 lanes: shfl_xor 1 and 2; rescale l and o by alpha);
        # then P V: for each 16 keys kk, pack_f16 the score pairs into P's A fragment (a0 = s[2kk,
        # 0..1], a1 = s[2kk, 2..3], a2 = s[2kk + 1, 0..1], a3 = s[2kk + 1, 2..3]) and mma with
        # vt[8n + g, 8kk + t], vt[8n + g, 8kk + 4 + t]. Finally add l over the 4 lanes, divide,
        # store rows < T. Every lane calls every mma_f16 and shfl_xor (no mma inside an `if`).
        pass

    return tc_kernel


_KERNELS = {}


def flash_kernel_for(D: int, tile: int, wide: bool, tensor_cores: bool = False):
    """One compiled kernel per (head_dim, tile, 16-byte loads or not, path), built on first use."""
    key = (D, tile, wide, tensor_cores)
    if key not in _KERNELS:
        if tensor_cores:
            _KERNELS[key] = make_tc_kernel(D, tile, tc_keys(D, tile), load8_pairs_wide if wide else load8_pairs)
        else:
            _KERNELS[key] = make_flash_kernel(D, tile, load8_wide if wide else load8)
    return _KERNELS[key]


def fits(D: int, tile: int) -> bool:
    """Whether head_dim D works with this tile: P^T ([tile, tile]) reuses the K^T buffer ([D, tile]),
    three D x tile fp32 tiles fit in 48 KiB, and D splits into 4-wide runs over the row's G threads."""
    return tile <= D and 3 * D * tile <= SHARED_FLOATS and D % (4 * groups_for(tile)) == 0


def tc_fits(D: int, tile: int) -> bool:
    """The tensor-core kernel: D in 16-wide mma steps, at most TC_MAX_D (the output fragments live
    in registers: D / 2 per thread), and its two padded fp16 tiles (Q / K and V^T) in 48 KiB."""
    keys = tc_keys(D, tile)
    return D % 16 == 0 and D <= TC_MAX_D and 4 * (max(tile, keys) * (D // 2 + 4) + D * (keys // 2 + 4)) <= 4 * SHARED_FLOATS


TC_MIN_CC = (8, 0)   # mma.sync.m16n8k16 with fp16 inputs: Ampere (sm_80) and newer; Turing (sm_75) lacks it


def tensor_cores_here() -> bool:
    """The mma kernel runs on this GPU (sm_80 or newer) or in the simulator (it emulates mma)."""
    cc = gpu.compute_capability()
    return cc is None or cc >= TC_MIN_CC


def no_tensor_cores_message() -> str:
    cc = gpu.compute_capability()
    return (f"tensor_cores=True needs sm_{TC_MIN_CC[0]}{TC_MIN_CC[1]} or newer (day 26's mma.sync.m16n8k16 with "
            f"fp16 inputs); {gpu.gpu_name()} is sm_{cc[0]}{cc[1]}: use tensor_cores=False (the register-tile kernel)")


def default_tile(D: int, tensor_cores: bool = False) -> int | None:
    return next((t for t in TC_TILES if tc_fits(D, t)), None) if tensor_cores else \
        next((t for t in TILES if fits(D, t)), None)


def _wide_ok(*tensors) -> bool:
    """16-byte global loads need every row to start on a 16-byte boundary."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1]) for t in tensors)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tile: int | None = None,
              tensor_cores: bool | None = None) -> torch.Tensor:
    """Causal grouped-query attention, flash style: no T x S buffer, fp32 accumulation.

    q [T, H, hd], k and v [S, KV, hd] (any strides), H % KV == 0, T <= S; query i sits at
    position S - T + i. Scale 1/sqrt(hd). `tensor_cores`: None uses the mma kernel on a GPU of
    sm_80 or newer (tensor_cores_here) for fp16 when hd is a multiple of 16 up to TC_MAX_D;
    True / False force one path (True on an older GPU: a one-line ValueError). `tile`
    queries per block, one of TILES (TC_TILES on tensor cores); None: the largest that fits hd.
    Returns [T, H, hd] in q's dtype.
    """
    # TODO(day 26): validate (one-line ValueErrors: 3-D shapes, k and v [S, KV, hd], H % KV == 0,
    # T <= S, one dtype of float16/float32). tensor_cores None -> True on a GPU (not gpu.SIM) where
    # tensor_cores_here(), for fp16 when default_tile(hd, True) exists; True where tensor_cores_here()
    # is False -> ValueError(no_tensor_cores_message()); True where the dtype/hd fail -> ValueError. A tile from
    # TC_TILES that tc_fits (tensor cores) or from TILES that fits (CUDA cores). Allocate out;
    # launch flash_kernel_for(hd, tile, _wide_ok(q, k, v), tensor_cores) on a (cdiv(T, tile), H)
    # grid with group = H // KV: tensor cores: tile // 16 * WARP threads and
    # scale_log2 = np.float32(log2(e) / sqrt(hd)); CUDA cores: tile // TQ * groups_for(tile)
    # threads and scale = np.float32(1 / sqrt(hd)).
    raise NotImplementedError("Day 26: attention is not written yet -- edit days/day_26/flash_fast.py "
                              "(lesson: notes/day_26_flash_fast.md)")
