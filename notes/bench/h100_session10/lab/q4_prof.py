"""Lab: 4-bit GEMV per shape, graph-replayed with cold weights: fp16 previous linear vs day 47's linear vs
lab rows-per-warp (R = 1, 2, 4; block 64/128/256). Then the 1B decode tok/s: fp16, w4a16 (day 47), w4a16 rows."""
import sys, pathlib, math, time
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import torch
from shared.q4 import quantize_q4, Q4Weight
from shared.course.testing import graph_ms, cold_copies
from solutions.day_47 import w4a16 as w4
import q4_v

dev = torch.device("cuda")
print(torch.cuda.get_device_name(), flush=True)


def line(name, fn):
    try:
        print(f"  {name:<22} {fn():8.2f} us", flush=True)
    except Exception as e:
        print(f"  {name:<22} FAILED {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}", flush=True)


shapes = [("1B qkv", 3072, 2048), ("1B gate_up", 16384, 2048), ("1B o", 2048, 2048), ("1B down", 2048, 8192),
          ("1B lm_head", 128256, 2048), ("S qkv", 960, 576), ("S gate_up", 3072, 576), ("S down", 576, 1536),
          ("S lm_head", 49152, 576)]
for name, N, K in shapes:
    g = torch.Generator().manual_seed(N + K)
    w = (torch.randn(N, K, generator=g) * 0.02).half().to(dev)
    q4 = quantize_q4(w)
    x = torch.randn(1, K, generator=g).half().to(dev)
    want = w4.linear(x, q4).float()
    for nm, f, tol in (("v1", q4_v.linear_v1, 1e-3), ("v2", q4_v.linear_v2, 2e-2)):
        got = f(x, q4).float()
        err = ((got - want).abs().max() / want.abs().max()).item()
        print(f"  {nm} max rel err {err:.2e}" + ("  MISMATCH" if err > tol else ""), flush=True)
    print(f"-- {name} [{N}, {K}]: fp16 {N*K*2/1e6:.1f} MB, q4 {q4.nbytes/1e6:.1f} MB", flush=True)
    mk4 = lambda: Q4Weight(q4.qs.clone(), q4.d.clone(), q4.m.clone(), q4.group_size, q4.dtype)
    us = lambda make, nbytes, f: graph_ms([(lambda c=c: f(c)) for c in cold_copies(make, nbytes)], reps=10) * 1e3
    line("fp16 linear (prev)", lambda: us(lambda: w.clone(), N * K * 2, lambda c: w4.linear(x, c)))
    line("q4 day47", lambda: us(mk4, q4.nbytes, lambda c: w4.linear(x, c)))
    for bs in (64, 128, 256):
        line(f"q4 v1 bs{bs}", lambda: us(mk4, q4.nbytes, lambda c: q4_v.linear_v1(x, c, block_size=bs)))
    for bs in (128, 256):
        line(f"q4 v2 bs{bs} +quant x", lambda: us(mk4, q4.nbytes, lambda c: q4_v.linear_v2(x, c, block_size=bs)))
    xqs = q4_v.quantize_x(x)
    line(f"q4 v2 bs128 gemv only", lambda: us(mk4, q4.nbytes, lambda c: q4_v.linear_v2(x, c, xqs=xqs)))
for nm, k in (("day47", w4.gemv_wide), ("v1", q4_v.V1[True]), ("v2", q4_v.V2[True]), ("quant_x", q4_v.quantize_x_kernel)):
    try:
        print("regs", nm, list(k.get_regs_per_thread().values()) if isinstance(k.get_regs_per_thread(), dict) else k.get_regs_per_thread(), flush=True)
    except Exception as e:
        print("regs", nm, type(e).__name__, e)

# the 1B decode: fp16, day 47 w4a16, w4a16 with rows (R=4, bs 128 unless argv says)
sys.path.insert(0, "checkers/day_47")
import test_day_47 as t47
from shared import models
from shared.engine import Engine
path = models.resolve("llama-1b")
e = Engine(str(path), track="solutions", dtype="fp16")
fp = t47.decode_rate(e); del e; torch.cuda.empty_cache()
q = t47.q4_engine(w4, path, "solutions", "w4a16")
base = t47.decode_rate(q); del q; torch.cuda.empty_cache()
orig = w4.linear
res = {}
for nm, f in (("v1", q4_v.linear_v1), ("v2", q4_v.linear_v2)):
    def patched(x, w, f=f, **kw):
        if isinstance(w, Q4Weight) and x.shape[0] == 1 and not kw:
            return f(x, w)
        return orig(x, w, **kw)
    w4.linear = patched
    q = t47.q4_engine(w4, path, "solutions", "w4a16")
    res[nm] = t47.decode_rate(q); del q; torch.cuda.empty_cache()
    w4.linear = orig
print(f"1B decode tok/s: fp16 {fp:.1f} | w4a16 day47 {base:.1f} ({base/fp:.2f}x) | " + " | ".join(f"{k} {v:.1f} ({v/fp:.2f}x)" for k, v in res.items()), flush=True)
