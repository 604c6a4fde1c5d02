"""Run every shared-memory kernel of the course once, small, under NVIDIA's compute-sanitizer.

- synccheck: a cuda.syncthreads() that not every thread of the block reaches (a barrier in an `if`);
- racecheck: two threads touching the same shared-memory word with no barrier between them.

Seen on an H100: racecheck reports a missing barrier in days 03, 04 and 05's kernels, but
synccheck does not report day 03's barrier moved inside `if tid < s:` (since Volta a barrier in
divergent code is not flagged, and warps that leave the loop count as arrived): the simulator's
check (shared/runtime/simbarrier.py) is what catches that one. Each (tool, day) runs in its own
process: `compute-sanitizer --tool T python -m shared.course.sanitize --exercise DAY`.

    python -m shared.course.sanitize [DAY ...] [--track days|solutions] [--tool synccheck racecheck]

Exit code 1 if any run reported a hazard (HAZARD) or could not run (ERROR); 0, with a line saying
why, when there is no GPU or no compute-sanitizer (it skips, it does not fail).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

TOOLS = ("synccheck", "racecheck")


def _tensors(device):
    import torch
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)
    return torch, randn


# day -> what to launch: every shared-memory kernel of that day once, small (a hazard needs only
# a few warps to show), at odd sizes; small enough for the simulator too (checkers/test_sanitize.py)
def _day_03(m, device):
    torch, randn = _tensors(device)
    x = randn(2, 300)
    for shuffle in ((False,) if device.type == "cpu" else (False, True)):
        m.row_sum(x, block_size=128, warp_shuffle=shuffle)
        m.row_max(x, block_size=64, warp_shuffle=shuffle)


def _day_04(m, device):
    torch, randn = _tensors(device)
    m.softmax(randn(2, 300), block_size=128)


def _day_05(m, device):
    torch, randn = _tensors(device)
    m.matmul(randn(20, 40), randn(18, 40), tiled=True, tile=16)


def _day_10(m, device):
    torch, randn = _tensors(device)
    m.rmsnorm(randn(2, 200, dtype=torch.float16), randn(200, dtype=torch.float16), 1e-5, block_size=64)


def _day_11(m, device):
    torch, randn = _tensors(device)
    w = randn(6, 1024, dtype=torch.float16)        # K = 1024: two warps share each row of the GEMV
    m.linear(randn(1, 1024, dtype=torch.float16), w, block_size=64)   # GEMV
    m.linear(randn(5, 200, dtype=torch.float16), w[:, :200], path="gemm")   # tiled GEMM
    m.linear(randn(5, 1024, dtype=torch.float16), w, path="skinny", block_size=64)   # skinny: T = 5 rows


def _day_13(m, device):
    torch, randn = _tensors(device)
    m.naive_attention(randn(5, 16), randn(9, 16), randn(9, 16))


def _day_14(m, device):
    torch, randn = _tensors(device)
    m.attention(randn(3, 4, 16), randn(5, 2, 16), randn(5, 2, 16), block_size=64)


def _day_17(m, device):
    torch, randn = _tensors(device)
    x = randn(2, 300)
    m.sample(x, block_size=64)                                                      # argmax
    m.sample(x, block_size=64, chunk=64)                                            # sliced: partials + merge
    m.sample(x, 0.8, 50, 0.9, torch.Generator(device=device).manual_seed(0), block_size=64)   # Gumbel


def _day_41(m, device):
    torch, randn = _tensors(device)
    from shared.reference import quantize_int8
    w = quantize_int8(randn(6, 1024), scheme="asymmetric", granularity="group", group_size=32)
    x = randn(5, 1024, dtype=torch.float16)
    m.linear(x[:1], w, block_size=64)                   # GEMV: warps share a row, partials in shared memory
    m.linear(x, w, path="skinny", block_size=64)        # skinny: T = 5 tokens
    m.linear(randn(19, 200), quantize_int8(randn(7, 200)), path="gemm")   # tiled GEMM, ragged tiles


def _day_42(m, device):
    torch, randn = _tensors(device)
    from shared.quant import QuantWeight
    from shared.reference import quantize_int8

    def int8(rows, cols, **kw):
        q = quantize_int8(randn(rows, cols).cpu(), **kw)
        return QuantWeight(q.q.to(device), q.scale.to(device), None if q.zero is None else q.zero.to(device),
                           q.group_size, q.scheme, q.granularity, q.dtype)
    h, nw = randn(2, 200, dtype=torch.float16), randn(200, dtype=torch.float16)   # x into shared memory, then rows
    m.norm_linear(h, nw, 1e-5, int8(9, 200), block_size=64)
    pos = torch.tensor([3, 40], dtype=torch.int32, device=device)
    m.norm_linear(h, nw, 1e-5, int8(16, 200, scheme="asymmetric"), rope=(pos, randn(4).abs(), 1), block_size=64)
    g, gw = randn(2, 192, dtype=torch.float16), randn(192, dtype=torch.float16)     # groups: a scale per chunk
    m.norm_linear(g, gw, 1e-5, int8(6, 192, granularity="group", group_size=32), gated=True, block_size=64)
    m.linear_add(randn(2, 200, dtype=torch.float16), int8(7, 200), randn(2, 7, dtype=torch.float16), block_size=32)


def _day_48(m, device):
    torch, randn = _tensors(device)
    h = torch.float16                                 # the tensor-core skinny linear: split-K sums in shared memory
    m.linear(randn(5, 256, dtype=h), randn(40, 256, dtype=h), path="mma", block_size=128, warps_per_row=4)
    m.linear(randn(37, 96, dtype=h), randn(23, 96, dtype=h), path="mma", block_size=64, warps_per_row=2)


def _day_54(m, device):
    torch, randn = _tensors(device)
    h = randn(2, 200, dtype=torch.float16)
    m.add_rmsnorm(h, randn(2, 200, dtype=torch.float16), randn(200, dtype=torch.float16), 1e-5, block_size=64)


def _day_20(m, device):
    torch, randn = _tensors(device)
    cache_len = torch.tensor([30], dtype=torch.int32, device=device)
    m.decode_attention(randn(4, 16), randn(2, 40, 16), randn(2, 40, 16), cache_len, block_size=64)


def _day_24(m, device):
    torch, randn = _tensors(device)
    x = randn(3, 300)
    x[1, :150] = float("-inf")                      # a masked prefix: threads that saw only -inf merge
    m.online_softmax(x, block_size=64)
    m.online_softmax(randn(2, 77, dtype=torch.float16), block_size=128)   # more threads than columns


def _day_25(m, device):
    torch, randn = _tensors(device)
    m.attention(randn(37, 4, 16), randn(45, 2, 16), randn(45, 2, 16), block_q=16, block_k=8)   # T < S, odd
    m.attention(randn(5, 4, 16, dtype=torch.float16), randn(5, 2, 16, dtype=torch.float16),
                randn(5, 2, 16, dtype=torch.float16))                                       # T < tile


def _day_26(m, device):
    from shared.runtime import gpu
    torch, randn = _tensors(device)
    D = 16 if gpu.SIM else 64      # the simulator runs every mma as Python: there, the smallest head
    q, k, v = (randn(19, 4, D, dtype=torch.float16), randn(37, 2, D, dtype=torch.float16),
               randn(37, 2, D, dtype=torch.float16))
    m.attention(q, k, v, tensor_cores=False)           # CUDA-core kernel (P^T through shared memory)
    m.attention(q, k, v, tensor_cores=True)            # mma kernel, tile 128 (8 warps)
    m.attention(q, k, v, tensor_cores=True, tile=64)   # mma kernel, 4 warps


def _day_27(m, device):
    torch, randn = _tensors(device)
    cache_len = torch.tensor([30], dtype=torch.int32, device=device)
    m.decode_attention(randn(6, 24), randn(2, 41, 24), randn(2, 41, 24), cache_len, splits=3, block_size=32,
                       merge_block=32)
    h = torch.float16                                # 16-byte loads, teams of 8 lanes, groups of 3, several teams per warp
    m.decode_attention(randn(9, 64, dtype=h), randn(3, 70, 64, dtype=h), randn(3, 70, 64, dtype=h), cache_len,
                       splits=2, block_size=64, merge_block=64)


def _day_30(m, device):
    torch, randn = _tensors(device)
    tables = torch.tensor([[3, 0, 5, -1], [1, 4, -1, -1]], dtype=torch.int32, device=device)
    lens = torch.tensor([11, 5], dtype=torch.int32, device=device)
    m.paged_decode_attention(randn(2, 6, 24), randn(6, 2, 4, 24), randn(6, 2, 4, 24), tables, lens, splits=2,
                             block_size=32, merge_block=32)
    h = torch.float16                                # 16-byte loads, teams of 8 lanes, groups of 4
    m.paged_decode_attention(randn(2, 8, 64, dtype=h), randn(6, 2, 4, 64, dtype=h), randn(6, 2, 4, 64, dtype=h),
                             tables, lens, splits=2, block_size=64, merge_block=64)


def _day_44(m, device):
    torch, randn = _tensors(device)
    tables = torch.tensor([[3, 0, 5, -1], [1, 4, -1, -1]], dtype=torch.int32, device=device)
    lens = torch.tensor([11, 5], dtype=torch.int32, device=device)
    for heads, hd, block in ((6, 24, 32), (8, 64, 64)):     # a lane with a partial row; teams of 8 lanes, groups of 4
        kq = torch.randint(-127, 128, (6, 2, 4, hd), dtype=torch.int8, device=device)
        vq = torch.randint(-127, 128, (6, 2, 4, hd), dtype=torch.int8, device=device)
        ks, vs = randn(6, 2, 4, dtype=torch.float16).abs() / 127, randn(6, 2, 4, dtype=torch.float16).abs() / 127
        m.paged_decode_attention_int8(randn(2, heads, hd, dtype=torch.float16), kq, vq, ks, vs, tables, lens, splits=2,
                                      block_size=block, merge_block=block)


def _day_47(m, device):
    torch, randn = _tensors(device)
    from shared.q4 import Q4Weight, quantize_q4
    for rows, cols, split in ((9, 96, 2), (5, 64, 1)):    # a row's warps add their partials in shared memory
        w = quantize_q4(randn(rows, cols).cpu())
        w = Q4Weight(w.qs.to(device), w.d.to(device), w.m.to(device), w.group_size, torch.float16)
        m.linear(randn(1, cols, dtype=torch.float16), w, block_size=64, warps_per_row=split)


EXERCISES = {3: _day_03, 4: _day_04, 5: _day_05, 10: _day_10, 11: _day_11, 13: _day_13, 14: _day_14,
             17: _day_17, 20: _day_20, 24: _day_24, 25: _day_25, 26: _day_26,
             27: _day_27, 30: _day_30, 41: _day_41, 42: _day_42, 44: _day_44, 47: _day_47, 48: _day_48, 54: _day_54}


def exercise(day: int, track: str) -> None:
    """Launch the day's shared-memory kernels once (this is what runs under the sanitizer)."""
    from shared.runtime.tier import select
    select()
    from shared.course import registry
    from shared.runtime import gpu
    import torch
    EXERCISES[day](registry.day_module(day, track), gpu.device())
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sanitizer() -> str | None:
    """The compute-sanitizer executable, or None."""
    found = shutil.which("compute-sanitizer")
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not found and base and os.path.exists(os.path.join(base, "bin", "compute-sanitizer")):
            found = os.path.join(base, "bin", "compute-sanitizer")
    return found


def why_skip() -> str | None:
    try:
        import torch
        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        return "no CUDA GPU here: the sanitizers need one (the sim tier checks barriers itself)"
    if sanitizer() is None:
        return "compute-sanitizer not found (it ships with the CUDA toolkit: put its bin/ on PATH or set CUDA_HOME)"
    return None


SUMMARY = re.compile(r"(ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY)[^\n]*")


def check(day: int, tool: str, track: str, timeout: float = 600) -> tuple[str, str]:
    """("clean" | "hazard" | "error", summary line) for one day under one tool."""
    cmd = [sanitizer(), "--tool", tool, "--error-exitcode", "99", sys.executable, "-m", "shared.course.sanitize",
           "--exercise", str(day), "--track", track]
    env = dict(os.environ, TINYINFER_TIER="gpu", TINYINFER_FAST_LAUNCH="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "error", f"timed out after {timeout:.0f} s"
    out = proc.stdout + proc.stderr
    if proc.returncode not in (0, 99):   # the program itself failed, not the kernels: show its last words
        return "error", f"exit code {proc.returncode}: " + " | ".join(out.strip().splitlines()[-3:])
    return ("clean" if proc.returncode == 0 else "hazard"), "; ".join(m.group(0).strip() for m in SUMMARY.finditer(out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.course.sanitize", description=__doc__.split("\n\n")[0])
    p.add_argument("days", nargs="*", type=int, help=f"days to check (default: {sorted(EXERCISES)})")
    p.add_argument("--track", default="solutions", choices=("days", "solutions"))
    p.add_argument("--tool", nargs="+", default=list(TOOLS), choices=TOOLS)
    p.add_argument("--timeout", type=float, default=600, help="seconds per (day, tool) run")
    p.add_argument("--exercise", type=int, help=argparse.SUPPRESS)   # the child: launch one day's kernels
    args = p.parse_args(argv)
    if args.exercise is not None:
        exercise(args.exercise, args.track)
        return 0
    days = args.days or sorted(EXERCISES)
    unknown = [d for d in days if d not in EXERCISES]
    if unknown:
        print(f"sanitize: days {unknown} have no shared-memory kernels here (known: {sorted(EXERCISES)})",
              file=sys.stderr)
        return 2
    skip = why_skip()
    if skip:
        print(f"sanitize: skipped: {skip}")
        return 0
    bad = 0
    for day in days:
        for tool in args.tool:
            status, summary = check(day, tool, args.track, args.timeout)
            bad += status != "clean"
            label = status if status == "clean" else status.upper()
            print(f"day {day:02d}  {tool:<9}  {label:<6}  {summary}", flush=True)
    print(f"{bad} of {len(days) * len(args.tool)} runs found hazards or failed" if bad else "no hazards")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
