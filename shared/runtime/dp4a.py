"""Integer dot products from Numba: PTX `dp4a`, an int32 warp shuffle and 16-byte word loads,
given to the learner for day 43's W8A8 kernels, so one kernel runs in both tiers.

Numba has no `dp4a`, so it is a small `@intrinsic` that emits the PTX instruction (inline assembly
through llvmlite), built like `mma_f16` in shared/runtime/mma.py.

- `dp4a(a, b, c)` -> int32: a and b are 32-bit words holding four SIGNED bytes each (byte i in
  bits 8i .. 8i + 7, the lowest first); the result is c + a0 b0 + a1 b1 + a2 b2 + a3 b3, all in
  32-bit integers (PTX `dp4a.s32.s32`: four multiply-adds in one instruction, exact; past 2^31 it
  wraps as int32 arithmetic does).
- `dp4a_u32(a, b, c)`: the same with the bytes read as UNSIGNED (0 .. 255: PTX `dp4a.u32.u32`),
  for data stored with an offset (asymmetric zero points at 128). Not what symmetric int8 wants:
  -1 is the byte 0xFF, which it reads as 255.
- `shfl_down_i32(v, offset)`: `cuda.shfl_down_sync` of an int32 over the full warp. The float
  shuffles of vector_loads.py would round a sum past 2^24; this one keeps every bit. In the
  simulator it passes values through shared memory, so EVERY thread of the block must call it.
- `load4_words_wide(a, row, j)`: a[row, j : j + 4] of an int32 array (int8 bytes viewed as words)
  in ONE 16-byte load (PTX `ld.global.v4.u32`). The address must be a multiple of 16 bytes: the
  caller checks, nothing here does. In the simulator: four element loads.

In the simulator `dp4a` is Python on the four bytes, the same integers. You use these; you do not
need to change them. Lesson: notes/day_43_w8a8.md, "dp4a".
"""
import numpy as np

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, int32

WARP = 32
FULL_MASK = 0xFFFFFFFF
MAX_BLOCK = 1024


def _bytes(word, signed):
    w = int(word) & 0xFFFFFFFF
    out = [(w >> (8 * i)) & 0xFF for i in range(4)]
    return [b - 256 if signed and b >= 128 else b for b in out]


def _wrap32(v: int) -> np.int32:
    return np.int32((v + 2 ** 31) % 2 ** 32 - 2 ** 31)


if gpu.SIM:
    import threading
    _first_use = threading.Lock()

    @cuda.jit(device=True)
    def dp4a(a, b, c):
        """c + the dot product of a's and b's four signed bytes, in int32."""
        return _wrap32(int(c) + sum(x * y for x, y in zip(_bytes(a, True), _bytes(b, True))))

    @cuda.jit(device=True)
    def dp4a_u32(a, b, c):
        """c + the dot product of a's and b's four unsigned bytes, in int32."""
        return _wrap32(int(c) + sum(x * y for x, y in zip(_bytes(a, False), _bytes(b, False))))

    @cuda.jit(device=True)
    def shfl_down_i32(v, offset):
        """Lane i gets lane i + offset's v (its own v past the end of the warp), via shared memory."""
        with _first_use:     # the simulator's cuda.shared.array is not thread-safe on first use
            buf = cuda.shared.array(MAX_BLOCK, int32)
        tid = cuda.threadIdx.x
        buf[tid] = v
        cuda.syncthreads()                  # every lane's value is in place
        got = buf[tid + offset] if tid % WARP + offset < WARP else v
        cuda.syncthreads()                  # everyone has read before the next call overwrites
        return np.int32(got)

    @cuda.jit(device=True)
    def load4_words_wide(a, row, j):
        return a[row, j], a[row, j + 1], a[row, j + 2], a[row, j + 3]

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    def _make_dp4a(ptx: str):
        @intrinsic
        def dp4a_intrinsic(typingctx, a, b, c):
            if not all(isinstance(t, types.Integer) for t in (a, b, c)):
                return None
            sig = types.int32(a, b, c)

            def codegen(context, builder, sig, args):
                i32 = ir.IntType(32)
                ins = [context.cast(builder, v, t, types.int32) for v, t in zip(args, sig.args)]
                fty = ir.FunctionType(i32, [i32, i32, i32])
                return builder.asm(fty, ptx, "=r,r,r,r", ins, side_effect=False)

            return sig, codegen
        return dp4a_intrinsic

    dp4a = _make_dp4a("dp4a.s32.s32 $0, $1, $2, $3;")
    dp4a_u32 = _make_dp4a("dp4a.u32.u32 $0, $1, $2, $3;")

    @cuda.jit(device=True)
    def shfl_down_i32(v, offset):
        return cuda.shfl_down_sync(FULL_MASK, int32(v), offset)

    @intrinsic
    def load4_words_wide(typingctx, a, row, j):
        """a[row, j : j + 4] (int32) as one 16-byte load. The caller guarantees the alignment."""
        if not isinstance(a, types.Array) or a.dtype != types.int32:
            return None
        sig = types.UniTuple(types.int32, 4)(a, row, j)

        def codegen(context, builder, sig, args):
            aty = sig.args[0]
            arr = context.make_array(aty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:])]
            ptr = cgutils.get_item_pointer(context, builder, aty, arr, idx, wraparound=False)
            i32 = ir.IntType(32)
            vec = builder.load(builder.bitcast(ptr, ir.VectorType(i32, 4).as_pointer()), align=16)
            words = [builder.extract_element(vec, ir.Constant(i32, k)) for k in range(4)]
            return context.make_tuple(builder, sig.return_type, words)

        return sig, codegen
