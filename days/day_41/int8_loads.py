"""Given (like shared/runtime/vector_loads.py on day 11): 16 int8 weights as 16 float32 values.

- `load16(q, row, k)`: q[row, k : k + 16] element by element -- sixteen loads, any alignment,
  any strides.
- `load16_wide(q, row, k)`: the same 16 values from ONE 16-byte load (PTX `ld.global.v4.u32`) on
  a GPU. The address must be a multiple of 16 bytes: the caller checks, nothing here does. In the
  simulator it is `load16`.

How a byte becomes a float without a conversion instruction (int -> float conversions run at a
quarter of the FMA rate or less, too slow to keep up with an H200's memory): flip the byte's sign
bit (x ^ 0x80 turns the int8 q into the unsigned q + 128), put it under the exponent of 2^23
(0x4B000000 | byte is the float 8388608 + q + 128, exact), subtract 8388736.0 = 2^23 + 128:
exactly q. Lesson: notes/day_41_w8a16_gemv.md, "A warp's loads".
"""
from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32


@cuda.jit(device=True)
def load16(a, row, k):
    """a[row, k : k + 16] as float32, element by element (the int8 values, signed)."""
    return (float32(a[row, k]), float32(a[row, k + 1]), float32(a[row, k + 2]), float32(a[row, k + 3]),
            float32(a[row, k + 4]), float32(a[row, k + 5]), float32(a[row, k + 6]), float32(a[row, k + 7]),
            float32(a[row, k + 8]), float32(a[row, k + 9]), float32(a[row, k + 10]), float32(a[row, k + 11]),
            float32(a[row, k + 12]), float32(a[row, k + 13]), float32(a[row, k + 14]), float32(a[row, k + 15]))


if gpu.SIM:
    load16_wide = load16                    # the simulator has no vector loads

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

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
