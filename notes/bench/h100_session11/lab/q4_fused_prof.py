"""Lab (GPU), with branch day47-w4a8 overlaid: its fused W4A8 kernels per 1B shape (block sizes 128 / 256 / 512) vs
day 54 fp16 and day 42 int8 fused, graph-replayed with cold weights; registers per kernel. (The decode tok/s is the
checker's bench.)"""
import sys, pathlib, types
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import torch
from shared.reference import quantize_int8
from shared.q4 import quantize_q4, Q4Weight
from shared.course.testing import graph_ms, cold_copies
from solutions.day_54 import fused_linear as f16
from solutions.day_42 import int8_gemv as i8
from solutions.day_47 import w4a16 as w4
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "g10"))
import q4_pre
pre = q4_pre.module()

dev = torch.device("cuda")
print(torch.cuda.get_device_name(), flush=True)
H, F, V, hd = 2048, 8192, 128256, 64


def line(name, fn):
    try:
        print(f"  {name:<24} {fn():8.2f} us", flush=True)
    except Exception as e:
        print(f"  {name:<24} FAILED {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}", flush=True)


for name, N, K, kind in [("qkv", 3072, H, "rotary"), ("gate_up", 2 * F, H, "gated"), ("o", H, H, "add"),
                         ("down", H, F, "add"), ("lm_head", V, H, "plain")]:
    g = torch.Generator().manual_seed(N + K)
    w = (torch.randn(N, K, generator=g) * 0.02).half().to(dev)
    qw = quantize_int8(w)
    q4 = quantize_q4(w)
    x = torch.randn(1, K, generator=g).half().to(dev)
    nw = torch.ones(K, dtype=torch.float16, device=dev)
    h = torch.zeros(1, N, dtype=torch.float16, device=dev)
    rope = (torch.zeros(1, dtype=torch.int32, device=dev), torch.rand(hd // 2, device=dev), 32)
    def fused(mod, W):
        if kind == "add":
            return lambda: mod.linear_add(x, W, h)
        return lambda: mod.norm_linear(x, nw, 1e-5, W, gated=kind == "gated", rope=rope if kind == "rotary" else None)
    def fused_bs(W, bs):
        if kind == "add":
            return lambda: w4.linear_add(x, W, h, block_size=bs)
        return lambda: w4.norm_linear(x, nw, 1e-5, W, gated=kind == "gated", rope=rope if kind == "rotary" else None,
                                      block_size=bs)
    if kind != "add":
        a = w4.norm_linear(x, nw, 1e-5, q4, gated=kind == "gated", rope=rope if kind == "rotary" else None)
        f16_ = f16.norm_linear(x, nw, 1e-5, w, gated=kind == "gated", rope=rope if kind == "rotary" else None)
        print(f"  w4a8 vs fp16 weights max rel diff {((a.float() - f16_.float()).abs().max() / f16_.float().abs().max()).item():.2e}", flush=True)
    print(f"-- {name} [{N}, {K}] {kind}: fp16 {N*K*2/1e6:.1f} MB, int8 {qw.nbytes/1e6:.1f} MB, q4 {q4.nbytes/1e6:.1f} MB", flush=True)
    us = lambda make, nbytes, mod: graph_ms([fused(mod, c) for c in cold_copies(make, nbytes)], reps=10) * 1e3
    mk8 = lambda: type(qw)(qw.q.clone(), qw.scale.clone(), None, K, qw.scheme, qw.granularity, torch.float16)
    mk4 = lambda: Q4Weight(q4.qs.clone(), q4.d.clone(), q4.m.clone(), q4.group_size, q4.dtype)
    line("fp16 day54 fused", lambda: us(lambda: w.clone(), N * K * 2, f16))
    line("int8 day42 fused", lambda: us(mk8, qw.nbytes, i8))
    line("q4 day47 (this branch)", lambda: us(mk4, q4.nbytes, w4))
    for bs in (128, 512):
        line(f"q4 day47 bs{bs}", lambda: graph_ms([fused_bs(c, bs) for c in cold_copies(mk4, q4.nbytes)], reps=10) * 1e3)
    line("q4 day47 + preload", lambda: us(mk4, q4.nbytes, pre))
for key in ((True, "rotary", True), (True, "gated", True), (True, "add", False), (True, "plain", True)):
    try:
        print("regs", key, list(w4.kernel_for(*key).get_regs_per_thread().values()), flush=True)
    except Exception as e:
        print("regs", key, type(e).__name__, e)
