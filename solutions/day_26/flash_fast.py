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
        qt = cuda.shared.array((D, TILE), float32, alignment=ALIGN)   # Q^T, pre-scaled
        kt = cuda.shared.array((D, TILE), float32, alignment=ALIGN)   # K^T, then P^T ([key, query])
        vs = cuda.shared.array((TILE, D), float32, alignment=ALIGN)   # V
        s = cuda.local.array((TQ, TK), float32)      # scores, then probabilities (registers)
        o = cuda.local.array((TQ, TD), float32)      # output accumulator (registers)
        m = cuda.local.array(TQ, float32)            # running max of each of my rows
        l = cuda.local.array(TQ, float32)            # my part of each row's running sum
        a = cuda.local.array(TQ, float32)
        b = cuda.local.array(TB, float32)

        T, S = q.shape[0], k.shape[0]
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        r, c = tid // G, tid % G
        q_start = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * TILE   # the longest rows start first
        h = cuda.blockIdx.y
        qh, kh, vh = q[:, h, :], k[:, h // group, :], v[:, h // group, :]
        offset = S - T                                # query i sits at position offset + i

        # Q tile, transposed and scaled; zeros past T. Neighbouring threads take neighbouring rows,
        # so their shared stores go to neighbouring banks.
        for vec in range(tid, TILE * D // 8, nthreads):
            row, d0 = vec % TILE, vec // TILE * 8
            if q_start + row < T:
                x = load(qh, q_start + row, d0)
                for e in range(8):
                    qt[d0 + e, row] = x[e] * scale
            else:
                for e in range(8):
                    qt[d0 + e, row] = float32(0.0)
        for i in range(TQ):
            m[i] = float32(-math.inf)
            l[i] = float32(0.0)
            for j in range(TD):
                o[i, j] = float32(0.0)

        first_pos = offset + q_start                          # position of the tile's first query
        k_end = min(S, first_pos + TILE)                      # causal: no key past the last query
        for k_start in range(0, k_end, TILE):
            cuda.syncthreads()    # everyone is done with the previous P^T and V (and Q^T is complete)
            for vec in range(tid, TILE * D // 8, nthreads):
                row, d0 = vec % TILE, vec // TILE * 8          # K^T: neighbouring rows, like Q
                if k_start + row < S:
                    x = load(kh, k_start + row, d0)
                    for e in range(8):
                        kt[d0 + e, row] = x[e]
                else:
                    for e in range(8):
                        kt[d0 + e, row] = float32(0.0)
                row, d0 = vec // (D // 8), vec % (D // 8) * 8  # V: neighbouring 16-byte pieces of a row
                if k_start + row < S:
                    x = load(vh, k_start + row, d0)
                    for e in range(8):
                        vs[row, d0 + e] = x[e]
                else:
                    for e in range(8):
                        vs[row, d0 + e] = float32(0.0)        # 0 * garbage could be NaN
            cuda.syncthreads()    # the K^T and V tiles are complete

            # S = (Q * scale) K^T: per step d, 4 + TK loaded values feed 4 * TK multiply-adds
            for i in range(TQ):
                for j in range(TK):
                    s[i, j] = float32(0.0)
            for d in range(D):
                a[0], a[1], a[2], a[3] = load4(qt, d, TQ * r)
                for jj in range(TK // 4):
                    b[4 * jj], b[4 * jj + 1], b[4 * jj + 2], b[4 * jj + 3] = load4(kt, d, jj * 4 * G + 4 * c)
                for i in range(TQ):
                    for j in range(TK):
                        s[i, j] += a[i] * b[j]

            # the causal mask, only on tiles that reach past the first query's position
            if k_start + TILE - 1 > first_pos:
                for i in range(TQ):
                    pos = first_pos + TQ * r + i
                    for j in range(TK):
                        if k_start + j // 4 * 4 * G + 4 * c + j % 4 > pos:
                            s[i, j] = float32(-math.inf)

            # online softmax: the row max over the G threads of the row, rescale what came before
            for i in range(TQ):
                mx = s[i, 0]
                for j in range(1, TK):
                    mx = max(mx, s[i, j])
                lanes = G // 2
                while lanes > 0:
                    mx = max(mx, shfl_xor(mx, lanes))
                    lanes //= 2
                m_new = max(m[i], mx)        # finite: key 0 is in every row's first tile
                alpha = math.exp(m[i] - m_new)
                m[i] = m_new
                l[i] *= alpha
                for j in range(TK):
                    p = math.exp(s[i, j] - m_new)
                    s[i, j] = p
                    l[i] += p
                for j in range(TD):
                    o[i, j] *= alpha

            cuda.syncthreads()    # everyone has read K^T: its space now holds P^T
            for i in range(TQ):
                for j in range(TK):
                    kt[j // 4 * 4 * G + 4 * c + j % 4, TQ * r + i] = s[i, j]
            cuda.syncthreads()    # P^T is complete

            # O += P V: per key kk, 4 + TD loaded values feed 4 * TD multiply-adds
            for kk in range(TILE):
                a[0], a[1], a[2], a[3] = load4(kt, kk, TQ * r)
                for jj in range(TD // 4):
                    b[4 * jj], b[4 * jj + 1], b[4 * jj + 2], b[4 * jj + 3] = load4(vs, kk, jj * 4 * G + 4 * c)
                for i in range(TQ):
                    for j in range(TD):
                        o[i, j] += a[i] * b[j]

        # each row's sum is split over its G threads: add the parts, divide, store
        for i in range(TQ):
            total = l[i]
            lanes = G // 2
            while lanes > 0:
                total += shfl_xor(total, lanes)
                lanes //= 2
            t = q_start + TQ * r + i
            if t < T:
                inv = float32(1.0) / total
                for j in range(TD):
                    out[t, h, j // 4 * 4 * G + 4 * c + j % 4] = o[i, j] * inv

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
        kw = cuda.shared.array((ROWS, KW), uint32, alignment=ALIGN)   # Q, then each K tile
        vt = cuda.shared.array((D, VW), uint32, alignment=ALIGN)      # V^T: pairs of consecutive keys
        qa = cuda.local.array((KD, 4), uint32)       # Q's A fragments, loaded once
        s = cuda.local.array((NK, 4), float32)       # scores, then probabilities
        o = cuda.local.array((ND, 4), float32)       # output accumulator
        m = cuda.local.array(2, float32)             # running max of my two rows (raw scores)
        l = cuda.local.array(2, float32)             # my part of their running sums

        T, S = q.shape[0], k.shape[0]
        tid = cuda.threadIdx.x
        lane = tid % WARP
        g, t = lane // 4, lane % 4
        r0 = 16 * (tid // WARP) + g                  # my first row in the tile; the second is r0 + 8
        q_start = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * TILE   # the longest rows start first
        h = cuda.blockIdx.y
        qh, kh, vh = q[:, h, :], k[:, h // group, :], v[:, h // group, :]
        offset = S - T
        first_pos = offset + q_start
        pos0, pos1 = first_pos + r0, first_pos + r0 + 8
        zero = uint32(0)

        for vec in range(tid, TILE * D // 8, WARPS * WARP):           # Q tile, zeros past T
            row, c8 = vec // (D // 8), vec % (D // 8)
            w = load(qh, q_start + row, 8 * c8) if q_start + row < T else (zero, zero, zero, zero)
            for e in range(4):
                kw[row, 4 * c8 + e] = w[e]
        cuda.syncthreads()
        for ks in range(KD):
            qa[ks, 0], qa[ks, 1] = kw[r0, 8 * ks + t], kw[r0 + 8, 8 * ks + t]
            qa[ks, 2], qa[ks, 3] = kw[r0, 8 * ks + 4 + t], kw[r0 + 8, 8 * ks + 4 + t]
        for i in range(2):
            m[i] = float32(-math.inf)
            l[i] = float32(0.0)
        for n in range(ND):
            for e in range(4):
                o[n, e] = float32(0.0)

        k_end = min(S, first_pos + TILE)
        for k_start in range(0, k_end, KEYS):
            cuda.syncthreads()    # everyone is done with Q / the previous K and V^T
            for vec in range(tid, KEYS * D // 8, WARPS * WARP):       # K as [key][d pair], zeros past S
                row, c8 = vec // (D // 8), vec % (D // 8)
                w = load(kh, k_start + row, 8 * c8) if k_start + row < S else (zero, zero, zero, zero)
                for e in range(4):
                    kw[row, 4 * c8 + e] = w[e]
            for vec in range(tid, KEYS * D // 16, WARPS * WARP):      # V^T: keys 2p, 2p + 1 of dims 8c8..+7
                p, c8 = vec % (KEYS // 2), vec // (KEYS // 2)
                key = k_start + 2 * p
                x = load(vh, key, 8 * c8) if key < S else (zero, zero, zero, zero)
                y = load(vh, key + 1, 8 * c8) if key + 1 < S else (zero, zero, zero, zero)
                for e in range(4):            # word e holds dims 2e, 2e + 1: swap halves across x and y
                    vt[8 * c8 + 2 * e, p] = uint32((x[e] & 0xFFFF) | ((y[e] & 0xFFFF) << 16))
                    vt[8 * c8 + 2 * e + 1, p] = uint32((x[e] >> 16) | (y[e] & 0xFFFF0000))
            cuda.syncthreads()    # the K and V^T tiles are complete

            # S = Q K^T, one 16 x 8 block of keys at a time: K's row-major [key][d] is the B operand
            for n in range(NK):
                c0 = c1 = c2 = c3 = float32(0.0)
                for ks in range(KD):
                    c0, c1, c2, c3 = mma_f16(qa[ks, 0], qa[ks, 1], qa[ks, 2], qa[ks, 3],
                                             kw[8 * n + g, 8 * ks + t], kw[8 * n + g, 8 * ks + 4 + t],
                                             c0, c1, c2, c3)
                s[n, 0], s[n, 1], s[n, 2], s[n, 3] = c0, c1, c2, c3

            if k_start + KEYS - 1 > first_pos:       # the tile crosses the diagonal (or passes S)
                for n in range(NK):
                    for e in range(4):
                        if k_start + 8 * n + 2 * t + e % 2 > (pos0 if e < 2 else pos1):
                            s[n, e] = float32(-math.inf)

            # online softmax on the fragments: a row lives in the 4 lanes of a group
            for i in range(2):
                mx = s[0, 2 * i]
                for n in range(NK):
                    mx = max(mx, max(s[n, 2 * i], s[n, 2 * i + 1]))
                mx = max(mx, shfl_xor(mx, 1))
                mx = max(mx, shfl_xor(mx, 2))
                m_new = max(m[i], mx)          # finite: key 0 is in every row's first tile
                alpha = math.exp2((m[i] - m_new) * scale_log2)
                m[i] = m_new
                l[i] *= alpha
                for n in range(NK):
                    for e in range(2 * i, 2 * i + 2):
                        p = math.exp2((s[n, e] - m_new) * scale_log2)
                        s[n, e] = p
                        l[i] += p
                for n in range(ND):
                    o[n, 2 * i] *= alpha
                    o[n, 2 * i + 1] *= alpha

            # O += P V: the score fragments of keys 16kk..16kk+15, as fp16 pairs, are P's A fragment
            for kk in range(KK):
                a0 = pack_f16(s[2 * kk, 0], s[2 * kk, 1])
                a1 = pack_f16(s[2 * kk, 2], s[2 * kk, 3])
                a2 = pack_f16(s[2 * kk + 1, 0], s[2 * kk + 1, 1])
                a3 = pack_f16(s[2 * kk + 1, 2], s[2 * kk + 1, 3])
                for n in range(ND):
                    o[n, 0], o[n, 1], o[n, 2], o[n, 3] = mma_f16(
                        a0, a1, a2, a3, vt[8 * n + g, 8 * kk + t], vt[8 * n + g, 8 * kk + 4 + t],
                        o[n, 0], o[n, 1], o[n, 2], o[n, 3])

        # a row's sum is split over its 4 lanes: add the parts, divide, store the rows < T
        for i in range(2):
            total = l[i]
            total += shfl_xor(total, 1)
            total += shfl_xor(total, 2)
            row = q_start + r0 + 8 * i
            if row < T:
                inv = float32(1.0) / total
                for n in range(ND):
                    out[row, h, 8 * n + 2 * t] = o[n, 2 * i] * inv
                    out[row, h, 8 * n + 2 * t + 1] = o[n, 2 * i + 1] * inv

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
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"attention takes q [T, H, hd], k and v [S, KV, hd]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    T, H, D = q.shape
    S, KV = k.shape[:2]
    if k.shape != (S, KV, D) or v.shape != k.shape:
        raise ValueError(f"k and v must both be [S, KV, {D}]; got {tuple(k.shape)} and {tuple(v.shape)}")
    if KV == 0 or H % KV:
        raise ValueError(f"{H} query heads cannot be split evenly over {KV} KV heads: H % KV must be 0")
    if T > S:
        raise ValueError(f"{T} queries but only {S} keys: every query needs its own key (T <= S)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype, float16 or float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    tc_ok = q.dtype == torch.float16 and default_tile(D, True) is not None
    if tensor_cores is None:
        tensor_cores = tc_ok and not gpu.SIM and tensor_cores_here()
    elif tensor_cores and not tensor_cores_here():
        raise ValueError(no_tensor_cores_message())
    elif tensor_cores and not tc_ok:
        raise ValueError(f"tensor_cores=True needs float16 and a head_dim that is a multiple of 16 "
                         f"(at most {TC_MAX_D}); got {q.dtype}, head_dim {D}")
    tile = default_tile(D, tensor_cores) if tile is None else tile
    if tensor_cores and (tile not in TC_TILES or not tc_fits(D, tile)):
        raise ValueError(f"tile {tile} is not supported by the tensor-core kernel for head_dim {D}: need tile in {TC_TILES}")
    if not tensor_cores and (tile not in TILES or not fits(D, tile)):
        raise ValueError(f"head_dim {D} with tile {tile} is not supported: need tile in {TILES}, tile <= head_dim, "
                         f"3 * head_dim * tile <= {SHARED_FLOATS} and head_dim a multiple of {4 * groups_for(tile or 16)}")
    gpu.require_device(q, k, v)
    out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)
    if T == 0 or H == 0:
        return out
    kernel = flash_kernel_for(D, tile, _wide_ok(q, k, v), tensor_cores)
    if tensor_cores:      # one warp per 16 queries; the softmax runs in base 2 (exp2 is one instruction)
        threads, scale = tile // 16 * WARP, np.float32(math.log2(math.e) / math.sqrt(D))
    else:
        threads, scale = tile // TQ * groups_for(tile), np.float32(1.0 / math.sqrt(D))
    gpu.launch(kernel, (gpu.cdiv(T, tile), H), threads, q, k, v, out, H // KV, scale)
    return out
