"""Lab: branch day47-w4a8's fused W4A8 kernel with each warp's FIRST blocks of nibbles loaded before the
prologue (the RMSNorm and x's quantization take ~1-2 us in which no weight byte moves). Built by patching
the branch's solutions/day_47/w4a16.py source (run with the branch overlaid)."""
import pathlib
import types

import solutions.day_47.w4a16 as _branch

SRC = pathlib.Path(_branch.__file__)


def module():
    src = SRC.read_text()
    edits = [
        ("""        nb = K // BLOCK

        # 1. given: x[t] into shared memory""",
         """        nb = K // BLOCK
        rows0 = qw.shape[0]
        items0 = rows0 // 2 if gated or rotary else (rows0 + 1) // 2
        n0 = cuda.blockIdx.x * warps + warp          # this warp's first item: its rows' first blocks now
        p0 = 2 * n0
        p1 = min(2 * n0 + 1, rows0 - 1)
        if gated:
            p0 = n0
            p1 = n0 + items0
        if rotary:
            i0 = int64(uint32(n0) % uint32(hd2))
            p0 = (n0 - i0) * 2 + i0
            p1 = p0 + hd2
        pre = n0 < items0 and lane < nb
        if not pre:
            p0 = 0
            p1 = 0
        wa0 = load_w(qw, p0, 0 if not pre else WORDS * lane)
        wb0 = load_w(qw, p1, 0 if not pre else WORDS * lane)

        # 1. given: x[t] into shared memory"""),
        ("""                    wa = load_w(qw, r0, WORDS * b)
                    wb = load_w(qw, r1, WORDS * b)""",
         """                    if group == cuda.blockIdx.x and b == lane:
                        wa = wa0
                        wb = wb0
                    else:
                        wa = load_w(qw, r0, WORDS * b)
                        wb = load_w(qw, r1, WORDS * b)"""),
    ]
    for a, b in edits:
        assert src.count(a) == 1, a[:60]
        src = src.replace(a, b)
    mod = types.ModuleType("solutions.day_47.w4a16_pre")
    mod.__file__ = str(SRC.with_name("w4a16_pre.py"))
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod
