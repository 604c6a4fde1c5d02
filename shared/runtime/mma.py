"""Tensor cores from Numba: one warp-wide fp16 matrix multiply-add, and the packing it needs.

Numba has no tensor-core API, so these are small `@intrinsic`s that emit PTX (inline assembly
through llvmlite), built like `load8_wide` in shared/runtime/vector_loads.py.

- `mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)` -> (d0, d1, d2, d3) float32:
  PTX `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`, D = A B + C with A 16 x 16 fp16,
  B 16 x 8 fp16, C and D 16 x 8 fp32. The 32 lanes of a warp do it TOGETHER: each lane holds
  a few elements of every matrix (its "fragment"), so every lane of the warp must call it, with
  the same control flow. a0..a3 and b0, b1 are 32-bit words holding two fp16 each (the lower
  column / row index in the low 16 bits: see `pack_f16`).
- `pack_f16(lo, hi)` -> uint32: two float32 values rounded to fp16 (nearest even), `lo` in
  bits 0..15 and `hi` in bits 16..31: one A or B register.
- `load8_pairs(a, row, col)` -> 4 x uint32: a[row, col : col + 8] of an fp16 array as four
  packed pairs (a[row, col], a[row, col + 1]), ... read half by half, any alignment.
  `load8_pairs_wide`: the same in ONE 16-byte load; the caller guarantees the address is a
  multiple of 16 bytes (nothing here checks it).

Who holds what (g = lane // 4, the "group", and t = lane % 4, the lane in the group; PTX ISA,
"Matrix Fragments for mma.m16n8k16"):

    A (16 x 16, row-major)          B (16 x 8, "col": B[k, n])      C, D (16 x 8, fp32)
    a0: row g,     cols 2t, 2t+1    b0: rows 2t, 2t+1,     col g    c0, c1: row g,     cols 2t, 2t+1
    a1: row g + 8, cols 2t, 2t+1    b1: rows 2t+8, 2t+9,   col g    c2, c3: row g + 8, cols 2t, 2t+1
    a2: row g,     cols 2t+8, 2t+9
    a3: row g + 8, cols 2t+8, 2t+9

           cols 0  1 | 2  3 | 4  5 | 6  7 | 8  9 | ...        (A: the numbers are lanes)
    row 0:    [ 0  ] [ 1  ] [ 2  ] [ 3  ] [ 0  ] ...  a0 for cols 0-7, a2 for cols 8-15
    row 1:    [ 4  ] [ 5  ] [ 6  ] [ 7  ] [ 4  ] ...
    ...
    row 8:    [ 0  ] [ 1  ] [ 2  ] [ 3  ] ...         a1, a3: the same lanes, 8 rows down

Note that C's layout (row g, cols 2t, 2t+1) is A's layout for the left half of a 16 x 16 tile:
the fp32 result of one mma, rounded to fp16 and packed in pairs, IS the A operand of the next
(flash attention keeps P in registers this way). And B[k, n] with k the fast index of each pair
is a row-major [n][k] matrix read directly: K stored as [key][d] is the B operand of Q K^T.

In the simulator there are no warps that compute together: `mma_f16` writes each lane's
registers to shared memory, waits at a barrier, and every lane computes its own four outputs
from the whole warp's registers (fp16 inputs, fp32 products and sums, like the hardware up to
the order of the additions), then waits again. So there EVERY thread of the block must call
it, the same number of times (a GPU requires the same of a warp anyway).

You use these; you do not need to change them. Lesson: notes/day_26_flash_fast.md, "Tensor cores".
"""
import numpy as np

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, uint32

WARP = 32
MAX_BLOCK = 1024

if gpu.SIM:
    import threading
    _first_use = threading.Lock()

    # where each element of A (16 x 16) and B (16 x 8) sits: (lane, half index among the lane's
    # 12 halves: a0 lo, a0 hi, a1 lo, ..., a3 hi, b0 lo, ..., b1 hi), from the table above
    _r, _k = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    _A_LANE, _A_HALF = (_r % 8) * 4 + (_k % 8) // 2, 2 * (_r // 8 + 2 * (_k // 8)) + _k % 2
    _k, _n = np.meshgrid(np.arange(16), np.arange(8), indexing="ij")
    _B_LANE, _B_HALF = _n * 4 + (_k % 8) // 2, 8 + 2 * (_k // 8) + _k % 2

    @cuda.jit(device=True)
    def mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = A B + C for the warp, lanes exchanging registers through shared memory."""
        with _first_use:     # the simulator's cuda.shared.array is not thread-safe on first use
            buf = cuda.shared.array((MAX_BLOCK, 6), uint32)
        tid = cuda.threadIdx.x
        for i, word in enumerate((a0, a1, a2, a3, b0, b1)):
            buf[tid, i] = word
        cuda.syncthreads()                       # every lane's registers are in place
        lane = tid % WARP
        halves = np.ascontiguousarray(buf[tid - lane: tid - lane + WARP]).view(np.float16).astype(np.float32)
        a, b = halves[_A_LANE, _A_HALF], halves[_B_LANE, _B_HALF]
        g, t = lane // 4, lane % 4
        d = (a[[g, g + 8]] @ b[:, [2 * t, 2 * t + 1]]).astype(np.float32).ravel()   # rows g, g+8
        cuda.syncthreads()                       # everyone has read before the next call writes
        return (np.float32(c0 + d[0]), np.float32(c1 + d[1]), np.float32(c2 + d[2]), np.float32(c3 + d[3]))

    @cuda.jit(device=True)
    def pack_f16(lo, hi):
        return np.array([lo, hi], dtype=np.float32).astype(np.float16).view(np.uint32)[0]

    @cuda.jit(device=True)
    def load8_pairs(a, row, col):
        words = np.array([a[row, col + e] for e in range(8)], dtype=np.float16).view(np.uint32)
        return words[0], words[1], words[2], words[3]

    load8_pairs_wide = load8_pairs          # the simulator has no vector loads

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    _MMA = ("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")

    @intrinsic
    def mma_f16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """One warp-wide m16n8k16 multiply-add (see the module docstring for the lane layout)."""
        regs = (a0, a1, a2, a3, b0, b1)
        if not all(isinstance(r, types.Integer) for r in regs):
            return None
        sig = types.UniTuple(types.float32, 4)(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

        def codegen(context, builder, sig, args):
            i32, f32 = ir.IntType(32), ir.FloatType()
            ins = [context.cast(builder, x, t, types.uint32) for x, t in zip(args[:6], sig.args[:6])]
            ins += [context.cast(builder, x, t, types.float32) for x, t in zip(args[6:], sig.args[6:])]
            fty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
            # side_effect: the asm is "volatile", so LLVM never moves it into a branch some lanes skip
            res = builder.asm(fty, _MMA, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", ins, side_effect=True)
            return context.make_tuple(builder, sig.return_type, [builder.extract_value(res, i) for i in range(4)])

        return sig, codegen

    @intrinsic
    def pack_f16(typingctx, lo, hi):
        """Two float32 -> fp16 (round to nearest even) packed in one 32-bit word, lo first."""
        sig = types.uint32(lo, hi)

        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            words = []
            for x, t in zip(args, sig.args):
                half = builder.fptrunc(context.cast(builder, x, t, types.float32), ir.HalfType())
                words.append(builder.zext(builder.bitcast(half, ir.IntType(16)), i32))
            return builder.or_(words[0], builder.shl(words[1], ir.Constant(i32, 16)))

        return sig, codegen

    def _make_load8_pairs(wide: bool):
        @intrinsic
        def load(typingctx, a, row, col):
            if a.dtype != types.float16:
                return None
            sig = types.UniTuple(types.uint32, 4)(a, row, col)

            def codegen(context, builder, sig, args):
                aty = sig.args[0]
                arr = context.make_array(aty)(context, builder, args[0])
                idx = [context.cast(builder, x, t, types.intp) for x, t in zip(args[1:], sig.args[1:])]
                ptr = cgutils.get_item_pointer(context, builder, aty, arr, idx, wraparound=False)
                i16, i32 = ir.IntType(16), ir.IntType(32)
                if wide:                                  # one ld.v4.u32
                    vec = builder.load(builder.bitcast(ptr, ir.VectorType(i32, 4).as_pointer()), align=16)
                    words = [builder.extract_element(vec, ir.Constant(i32, j)) for j in range(4)]
                else:                                     # eight 2-byte loads, paired up
                    bits = builder.bitcast(ptr, i16.as_pointer())
                    h = [builder.zext(builder.load(builder.gep(bits, [ir.Constant(i32, e)]), align=2), i32)
                         for e in range(8)]
                    words = [builder.or_(h[2 * j], builder.shl(h[2 * j + 1], ir.Constant(i32, 16)))
                             for j in range(4)]
                return context.make_tuple(builder, sig.return_type, words)

            return sig, codegen
        return load

    load8_pairs = _make_load8_pairs(wide=False)
    load8_pairs_wide = _make_load8_pairs(wide=True)
