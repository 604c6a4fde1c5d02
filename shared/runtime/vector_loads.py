"""Vector loads and warp shuffles given to the learner (day 11's GEMV, days 27 and 30's decode
attention, day 41's int8 GEMV), so one kernel runs in both tiers.

- `load8(a, row, k)`: a[row, k : k + 8] as eight float32 values, element by element: eight
  independent loads, any alignment, any strides.
- `load8_wide(a, row, k)`: the same values in ONE 16-byte load for fp16 (two for fp32), on a GPU.
  The address must be a multiple of 16 bytes: the caller checks, nothing here does. Numba has no
  vector loads of array elements, so this is a small `@intrinsic`: it asks LLVM for a
  16-byte-aligned load of four 32-bit words (PTX `ld.global.v4.u32`) and splits each word into
  its two halves. In the simulator it is `load8`.
- `load16(q, row, k)` / `load16_wide(q, row, k)` (day 41): 16 int8 weights as 16 float32 values,
  element by element / from ONE 16-byte load (same alignment rule; `load16` in the simulator).
  A byte becomes a float without a conversion instruction (those run at a quarter of the FMA rate
  or less, too slow for an H200's memory): flip its sign bit (q ^ 0x80 is the unsigned q + 128),
  put it under the exponent of 2^23 (0x4B000000 | byte is the float 2^23 + q + 128, exact) and
  subtract 2^23 + 128: exactly q. Lesson: notes/day_41_w8a16_gemv.md, "A warp's loads".
- `shfl_down(v, offset)`: `cuda.shfl_down_sync` over the full warp on a GPU. The simulator has no
  warp shuffles; there it passes values through shared memory, so EVERY thread of the block
  must call it (it contains barriers).
- `shfl_xor(v, mask)`: lane i gets lane (i XOR mask)'s v (`cuda.shfl_xor_sync`, mask < 32): the
  butterfly that sums a team of lanes. Same rule in the simulator: every thread calls it.

You use these; you do not need to change them. Lessons: notes/day_11_linear.md and
notes/day_27_flash_decoding.md, "Making it fast".
"""
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32

WARP = 32
FULL_MASK = 0xFFFFFFFF
MAX_BLOCK = 1024


@cuda.jit(device=True)
def load8(a, row, k):
    """a[row, k : k + 8] as float32, element by element: eight loads, all in flight at once."""
    return (float32(a[row, k]), float32(a[row, k + 1]), float32(a[row, k + 2]), float32(a[row, k + 3]),
            float32(a[row, k + 4]), float32(a[row, k + 5]), float32(a[row, k + 6]), float32(a[row, k + 7]))


@cuda.jit(device=True)
def load16(a, row, k):
    """a[row, k : k + 16] as float32, element by element (the int8 values, signed)."""
    return (float32(a[row, k]), float32(a[row, k + 1]), float32(a[row, k + 2]), float32(a[row, k + 3]),
            float32(a[row, k + 4]), float32(a[row, k + 5]), float32(a[row, k + 6]), float32(a[row, k + 7]),
            float32(a[row, k + 8]), float32(a[row, k + 9]), float32(a[row, k + 10]), float32(a[row, k + 11]),
            float32(a[row, k + 12]), float32(a[row, k + 13]), float32(a[row, k + 14]), float32(a[row, k + 15]))



if gpu.SIM:
    load8_wide = load8                      # the simulator has no vector loads
    load16_wide = load16

    import threading
    _first_use = threading.Lock()

    @cuda.jit(device=True)
    def shfl_down(v, offset):
        """Lane i gets lane i + offset's v (its own v past the end of the warp), via shared memory."""
        # the simulator's cuda.shared.array is not thread-safe: without the lock, two threads'
        # first calls could each make their own array
        with _first_use:
            buf = cuda.shared.array(MAX_BLOCK, float32)
        tid = cuda.threadIdx.x
        buf[tid] = v
        cuda.syncthreads()                  # every lane's value is in place
        got = buf[tid + offset] if tid % WARP + offset < WARP else v
        cuda.syncthreads()                  # everyone has read before the next call overwrites
        return got

    @cuda.jit(device=True)
    def shfl_xor(v, mask):
        """Lane i gets lane (i XOR mask)'s v, via shared memory (see shfl_down)."""
        with _first_use:
            buf = cuda.shared.array(MAX_BLOCK, float32)
        tid = cuda.threadIdx.x
        buf[tid] = v
        cuda.syncthreads()                  # every lane's value is in place
        got = buf[tid ^ mask]
        cuda.syncthreads()                  # everyone has read before the next call overwrites
        return got

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    @intrinsic
    def load8_wide(typingctx, a, row, k):
        """a[row, k : k + 8] (fp16 or fp32) read as 16-byte vectors of 32-bit words, unpacked to
        float32. The caller guarantees 16-byte alignment; nothing here checks it."""
        if a.dtype not in (types.float16, types.float32):
            return None
        sig = types.UniTuple(types.float32, 8)(a, row, k)

        def codegen(context, builder, sig, args):
            aty = sig.args[0]
            bits = aty.dtype.bitwidth
            arr = context.make_array(aty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:])]
            ptr = cgutils.get_item_pointer(context, builder, aty, arr, idx, wraparound=False)
            i32 = ir.IntType(32)
            words = builder.bitcast(ptr, i32.as_pointer())
            values = []
            for q in range(0, 8 * bits // 32, 4):          # one 16-byte load per four words
                quad = builder.gep(words, [ir.Constant(i32, q)])
                vec = builder.load(builder.bitcast(quad, ir.VectorType(i32, 4).as_pointer()), align=16)
                for j in range(4):
                    word = builder.extract_element(vec, ir.Constant(i32, j))
                    for shift in range(0, 32, bits):       # low half first: the GPU is little-endian
                        raw = builder.lshr(word, ir.Constant(i32, shift)) if shift else word
                        raw = builder.trunc(raw, ir.IntType(bits)) if bits < 32 else raw
                        value = builder.bitcast(raw, context.get_value_type(aty.dtype))
                        values.append(context.cast(builder, value, aty.dtype, types.float32))
            return context.make_tuple(builder, sig.return_type, values)

        return sig, codegen

    SIGN_BITS = 0x80808080 - (1 << 32)      # 0x80808080 as a signed 32-bit constant
    MAGIC = 0x4B000000                      # the bits of the float 2^23
    OFFSET = float(2 ** 23 + 128)

    @intrinsic
    def load16_wide(typingctx, a, row, k):
        """a[row, k : k + 16] (int8) as one 16-byte load of four 32-bit words, unpacked to float32."""
        if not isinstance(a, types.Array) or a.dtype != types.int8:
            return None
        sig = types.UniTuple(types.float32, 16)(a, row, k)

        def codegen(context, builder, sig, args):
            aty = sig.args[0]
            arr = context.make_array(aty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], sig.args[1:])]
            ptr = cgutils.get_item_pointer(context, builder, aty, arr, idx, wraparound=False)
            i32, f32 = ir.IntType(32), ir.FloatType()
            vec = builder.load(builder.bitcast(ptr, ir.VectorType(i32, 4).as_pointer()), align=16)
            values = []
            for j in range(4):
                word = builder.xor(builder.extract_element(vec, ir.Constant(i32, j)), ir.Constant(i32, SIGN_BITS))
                for shift in (0, 8, 16, 24):        # the lowest byte first: the GPU is little-endian
                    byte = builder.lshr(word, ir.Constant(i32, shift)) if shift else word
                    byte = builder.and_(byte, ir.Constant(i32, 0xFF))
                    bits = builder.or_(byte, ir.Constant(i32, MAGIC))
                    values.append(builder.fsub(builder.bitcast(bits, f32), ir.Constant(f32, OFFSET)))
            return context.make_tuple(builder, sig.return_type, values)

        return sig, codegen

    @cuda.jit(device=True)
    def shfl_down(v, offset):
        return cuda.shfl_down_sync(FULL_MASK, v, offset)

    @cuda.jit(device=True)
    def shfl_xor(v, mask):
        return cuda.shfl_xor_sync(FULL_MASK, v, mask)
