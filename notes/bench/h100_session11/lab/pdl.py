"""Lab (GPU, sm_90): programmatic dependent launch (PDL) for a chain of decode GEMVs.

A decode step is ~118 kernels, each with a fixed cost (launch, ramp-up, the first loads' latency) of a few
microseconds. With PDL a kernel may START while the previous one still runs: it is launched with
programmatic stream serialization (cuda.core's LaunchConfig(programmatic_stream_serialization=True),
which numba-cuda 0.30 launches through), issues what does not depend on the previous kernel -- its
weights -- and only then executes `griddepcontrol.wait` (returns once the previous grid has completed and
its writes are visible) before it reads x. The previous kernel executes `griddepcontrol.launch_dependents`
early so the next one is scheduled as soon as SMs free up.

Experiment: a chain of fp16 GEMVs x_{i+1} = W_i x_i (the 1B layer shapes, weights cold in L2), a warp per
row, graph-captured; (a) plain launches, (b) PDL launches with the wait first (launch overlap only),
(c) PDL with the block's first weight chunk loaded into registers BEFORE the wait. Checks that (b) and
(c) give (a)'s outputs exactly, then prints us per GEMV.

Run on the GPU: PYTHONPATH=/tmp/site:$PWD python3 lab/g10/pdl.py
"""
import contextlib
import math
import sys

import torch
from shared.runtime import gpu  # chooses the tier before numba loads; gpu.stream() is torch's stream
from numba import cuda, float32
from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

import numba.cuda.dispatcher as nd

from shared.runtime.vector_loads import load8_wide, shfl_down

WARP = 32


def _asm_void(ptx):
    @intrinsic
    def fn(typingctx):
        sig = types.void()

        def codegen(context, builder, sig, args):
            builder.asm(ir.FunctionType(ir.VoidType(), []), ptx, "", [], side_effect=True)
            return context.get_dummy_value()
        return sig, codegen
    return fn


grid_dependency_wait = _asm_void("griddepcontrol.wait;")
launch_dependents = _asm_void("griddepcontrol.launch_dependents;")


@contextlib.contextmanager
def pdl_launches(on=True):
    """Every numba launch inside the block uses programmatic stream serialization (cuda.core)."""
    real = nd.LaunchConfig
    if not on:
        yield
        return

    def config(**kw):
        return real(**kw, programmatic_stream_serialization=True)
    nd.LaunchConfig = config
    try:
        yield
    finally:
        nd.LaunchConfig = real


def make_gemv(mode):
    """mode 0: plain; 1: PDL, wait first; 2: PDL, the first 16-byte chunk of the row loaded before the wait."""

    @cuda.jit
    def gemv(x, w, out):
        warps = cuda.blockDim.x // WARP
        n = cuda.blockIdx.x * warps + cuda.threadIdx.x // WARP
        lane = cuda.threadIdx.x % WARP
        N, K = w.shape
        chunks = K // 8
        if mode > 0:
            launch_dependents()
        z = float32(0.0)
        first = (z, z, z, z, z, z, z, z)
        if mode == 2 and n < N:
            first = load8_wide(w, n, lane * 8)          # weights do not depend on the previous kernel
        if mode > 0:
            grid_dependency_wait()                      # x does
        s = float32(0.0)
        if n < N:
            c = lane
            if mode == 2:
                xv = load8_wide(x, 0, c * 8)
                for j in range(8):
                    s += first[j] * xv[j]
                c += WARP
            while c < chunks:
                wv = load8_wide(w, n, c * 8)
                xv = load8_wide(x, 0, c * 8)
                for j in range(8):
                    s += wv[j] * xv[j]
                c += WARP
        offset = WARP // 2
        while offset > 0:
            s += shfl_down(s, offset)
            offset //= 2
        if lane == 0 and n < N:
            out[0, n] = s
    return gemv


KERNELS = [make_gemv(m) for m in range(3)]


def chain(mode, xs, ws):
    for i, w in enumerate(ws):
        N = w.shape[0]
        KERNELS[mode][(N + 7) // 8, 256, gpu.stream()](xs[i], w, xs[i + 1])   # the dispatcher: patched LaunchConfig


def main():
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), flush=True)
    shapes = [(3072, 2048), (2048, 3072), (8192, 2048), (2048, 8192)] * 8     # 32 GEMVs, each x the last's output
    g = torch.Generator().manual_seed(0)
    ws = [(torch.randn(N, K, generator=g) * (1 / math.sqrt(K))).half().to(dev) for N, K in shapes]
    xs = [torch.randn(1, shapes[0][1], generator=g).half().to(dev)] + [torch.empty(1, N, dtype=torch.float16, device=dev)
                                                                       for N, _ in shapes]
    results = {}
    for mode in range(3):
        with pdl_launches(mode > 0):
            chain(mode, xs, ws)
            torch.cuda.synchronize()
            results[mode] = xs[-1].clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=s):
                chain(mode, xs, ws)
        graph.replay()
        torch.cuda.synchronize()
        same = torch.equal(xs[-1], results[0])
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record()
        for _ in range(20):
            graph.replay()
        b.record()
        torch.cuda.synchronize()
        us = a.elapsed_time(b) * 1e3 / 20 / len(ws)
        print(f"mode {mode} ({['plain', 'PDL, wait first', 'PDL, first chunk before the wait'][mode]}): "
              f"{us:.2f} us per GEMV; output == plain: {same and torch.equal(results[mode], results[0])}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
