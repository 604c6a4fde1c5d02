"""Helpers the checkers share: seeded inputs, poisoned outputs, and comparisons whose failure
messages speak the learner's language (what is wrong, where, by how much)."""
from __future__ import annotations

import torch

# Tolerances per dtype for elementwise/reduction results (fp32 accumulation assumed).
TOLERANCES = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
              torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def tol(dtype: torch.dtype, scale: float = 1.0) -> dict:
    t = TOLERANCES[dtype]
    return dict(atol=t["atol"] * scale, rtol=t["rtol"] * scale)


def randn(*shape, dtype=torch.float32, device="cpu", seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)


# A quiet NaN with a payload that no arithmetic produces (0/0 and inf - inf give the canonical NaN):
# a NaN with these bits was never written, any other NaN was computed. float16 keeps the payload's
# top bits (0x7E2D is this NaN converted to float16), bfloat16 does not (plain NaN there).
UNWRITTEN = 0x7FC5A5A5
_UNWRITTEN16 = 0x7E2D


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with the UNWRITTEN NaN (or a sentinel for ints) so an element a kernel forgot to write shows up,
    and assert_close can tell it from a NaN the kernel computed."""
    if t.dtype == torch.float32:
        t.view(torch.int32).fill_(UNWRITTEN)
    elif t.dtype == torch.float16:
        t.view(torch.int16).fill_(_UNWRITTEN16)
    else:
        t.fill_(float("nan") if t.is_floating_point() else -12345)
    return t


def _never_written(t: torch.Tensor) -> torch.Tensor:
    """Where a tensor still holds the UNWRITTEN poison (torch's float16 -> float32 drops NaN payloads,
    so look at the tensor's own bits)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.float32:
        return (t.view(torch.int32) >> 13) == (UNWRITTEN >> 13)   # also float16's poison cast to float32
    if t.dtype == torch.float16:
        return t.view(torch.int16) == _UNWRITTEN16
    return torch.zeros(t.shape, dtype=torch.bool)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "output", atol: float = 1e-5,
                 rtol: float = 1e-5, launched: bool | None = None, poisoned: bool = False) -> None:
    """torch.testing-style check with a message that says which element and how it went wrong.

    A NaN that still has the UNWRITTEN poison's bits was never written; if `poisoned` (the output was
    allocated full of it: check_kernel) or no kernel ran (`launched` False), any other NaN was
    computed, and the message names only that cause."""
    assert isinstance(actual, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(actual).__name__}"
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    nan = torch.isnan(a) & ~torch.isnan(e)
    if nan.any():
        unwritten = nan & _never_written(actual)
        if unwritten.any():
            idx = tuple(int(i) for i in unwritten.nonzero()[0])
            raise AssertionError(f"{what}: element {idx} was never written ({int(unwritten.sum())} of {a.numel()} "
                                 "still hold the NaN this test filled the output with) -- check your bounds guard "
                                 "/ grid size: every output element needs a thread that writes it")
        idx = tuple(int(i) for i in nan.nonzero()[0])
        known = poisoned or launched is False
        raise AssertionError(f"{what}: NaN at index {idx} ({int(nan.sum())} of {a.numel()} elements), expected "
                             f"{e[idx].item():.6g} -- {_nan_cause(e, nan, known)}")
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        err = (a - e).abs().nan_to_num(0).max().item()
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.numel()} elements differ; first at index {idx}: "
                             f"got {a[idx].item():.6g}, expected {e[idx].item():.6g} (max abs error {err:.3g}, "
                             f"atol={atol:g}, rtol={rtol:g})")


_INF_MINUS_INF = ("exp(-inf - (-inf)) or -inf - (-inf) is NaN: a row or part that saw only -inf (masked) has "
                  "max -inf, so special-case it (its sum is 0, its output 0) before subtracting the max")


def _nan_cause(expected: torch.Tensor, nan: torch.Tensor, computed: bool) -> str:
    """The likely cause of NaNs where finite values were expected, as far as this test can tell."""
    zeros = bool((expected[nan] == 0).all())           # masked entries / fully masked rows expect 0
    cause = _INF_MINUS_INF if zeros else ("0/0, inf - inf, or exp(-inf - (-inf)) where a running max is still "
                                          "-inf (a part that saw only masked scores)")
    if computed:
        return "computed, not left unwritten: " + cause
    return f"computed ({cause}), or an element never written (check your bounds guard / grid size)"


def assert_cli_refuses(base_argv: list[str], flag_sets, capsys) -> None:
    """`tinyinfer BASE_ARGV FLAGS` for each flag set, in this process: exit 2 and exactly one line on
    stderr, "tinyinfer: error: ..." (progress lines, which start with "[", aside)."""
    from shared import cli
    for flags in flag_sets:
        code = cli.main([*base_argv, *flags])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("tinyinfer: error:"), (flags, err)


def record_bench(name: str, result: dict) -> None:
    """Write a benchmark result measured in this run to build/bench/<name>.json (and print it)."""
    import json
    from shared import REPO
    out = REPO / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"[bench] {name}: {result}")


def cuda_time_ms(fn, reps: int = 50) -> float:
    """Mean milliseconds per call of fn on the GPU: one warm-up call, then CUDA events around reps calls."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def graph_ms(calls, reps: int = 5) -> float:
    """GPU milliseconds per call, Python's launch cost left out: the calls captured once in a CUDA
    graph (how the engine replays a decode step, day 23), the graph replayed `reps` times. Each
    distinct call runs once first, on the capture's side stream: compiled and warm outside it."""
    import gc
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in dict.fromkeys(calls):          # a call listed several times warms up once
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    gc.disable()                                   # no finalizer may free CUDA memory mid-capture
    try:
        with torch.cuda.graph(graph, stream=side):
            for call in calls:
                call()
    finally:
        gc.enable()
    return cuda_time_ms(graph.replay, reps) / len(calls)


def cold_copies(make, nbytes: int, calls: int = 20) -> list:
    """Enough copies of a weight (`make()` returns one of `nbytes`) that they overflow the L2 cache
    three times over, cycled to at least `calls` entries: each call reads its weight from HBM, as
    a decode step does (every layer has its own)."""
    import math
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    n = max(1, math.ceil(3 * l2 / nbytes))
    copies = [make() for _ in range(n)]
    return [copies[i % n] for i in range(max(n, calls))]


def graph_us(fn, calls: int = 20, reps: int = 20) -> float:
    """Microseconds per call of fn, replayed from a CUDA graph of `calls` calls: the GPU's time,
    not Python's launch overhead (the engine runs its decode step inside day 23's graph too)."""
    return graph_ms([fn] * calls, reps) * 1e3


class HostReadError(AssertionError):
    """A value was read back from a tensor to the host on a path that must stay capture-safe."""


_HOST_READS = ("item", "tolist", "cpu", "__int__", "__float__", "__bool__", "__index__")


def no_host_reads():
    """Context manager: any tensor -> host read (.item(), int(t), .tolist(), .cpu(), bool(t), ...)
    raises HostReadError. It is how the sim tier (no GPU, no sync-debug mode) checks that a decode
    step could be captured in a CUDA graph. The simulator's own launch path is exempt: it hands
    kernels numpy views (that is the simulator's GPU, not a host read)."""
    import contextlib
    from unittest import mock

    def refuse(name):
        def method(self, *a, **k):
            raise HostReadError(f"Tensor.{name}() on the decode path: it waits for the GPU and cannot be "
                                "captured in a CUDA graph -- keep the value on the device (or check it on the "
                                "host while it is still a Python value)")
        return method

    stack = contextlib.ExitStack()
    for name in _HOST_READS:
        stack.enter_context(mock.patch.object(torch.Tensor, name, refuse(name)))
    return stack


# ---- diagnose before advising: races and overflow in the simulator ---------------------------
OVERFLOW_ADVICE = "math.exp overflowed: subtract the row max before exp"


def run_kernel(fn, what: str = "output"):
    """fn() with the simulator's OverflowError turned into advice: on a GPU exp(1000) is inf and
    the softmax quietly becomes NaN; the simulator's float64 math.exp raises instead."""
    try:
        return fn()
    except OverflowError as e:
        raise AssertionError(f"{OVERFLOW_ADVICE} ({what}: {e})") from None


def assert_deterministic(first: torch.Tensor, second: torch.Tensor, what: str = "output") -> None:
    """Two launches on the same input must agree bit for bit; if not, nothing else is worth saying."""
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)) or first.shape != second.shape:
        return   # a wrong type or shape: assert_close says so
    a, b = first.detach().cpu(), second.detach().cpu()
    same = (a == b) | (a != a) & (b != b) if a.is_floating_point() else a == b
    if not bool(same.all()):
        idx = tuple(int(i) for i in (~same).nonzero()[0])
        raise AssertionError(
            f"nondeterministic: a missing barrier? {what}: two identical launches disagree at index {idx} "
            f"({a[idx].item():.6g} vs {b[idx].item():.6g}): {RACE}")


RACE = ("a thread reads shared memory another thread has not finished writing -- a cuda.syncthreads() "
        "between the write and the read is missing")


def _attempt(fn):
    """('ok', output) or ('overflow', the simulator's message)."""
    try:
        return "ok", fn()
    except OverflowError as e:
        return "overflow", str(e)


def check_kernel(fn, expected: torch.Tensor, what: str = "output", atol: float = 1e-5, rtol: float = 1e-5,
                 tries: int = 4):
    """Run fn() twice and compare the runs with each other first (a race), then with `expected`.

    A race in a reduction gives wrong values whose pattern looks like other mistakes (a max that
    started at 0, a missing max subtraction, an exp that overflows); the second launch tells them
    apart, so the race verdict comes before any value-based advice. When launches overflow, up to
    `tries` launches run: one that does not overflow means the overflow came from a race.
    Returns the output.
    """
    from shared.runtime import gpu
    before = gpu.LAUNCHES
    with _poisoned_allocations():
        runs = [_attempt(fn), _attempt(fn)]
        while any(k == "overflow" for k, _ in runs) and all(k == runs[0][0] for k, _ in runs) and len(runs) < tries:
            runs.append(_attempt(fn))
    overflowed = sum(k == "overflow" for k, _ in runs)
    if 0 < overflowed < len(runs):
        raise AssertionError(f"nondeterministic: a missing barrier? {what}: {overflowed} of {len(runs)} identical "
                             f"launches overflowed math.exp and the others did not: {RACE}")
    if overflowed:
        raise AssertionError(f"{OVERFLOW_ADVICE} ({what}: {runs[0][1]}; all {len(runs)} identical launches did)")
    first, second = runs[0][1], runs[1][1]
    assert_deterministic(first, second, what)
    assert_close(first, expected, what, atol=atol, rtol=rtol, launched=gpu.LAUNCHES > before, poisoned=True)
    return first


def _poisoned_allocations():
    """Context manager: torch.empty / empty_like return float32/float16 tensors full of the UNWRITTEN
    NaN (as a GPU's garbage would be, not the zeros a fresh CPU page holds), so an output element a
    kernel never wrote is told apart from a NaN it computed."""
    import contextlib
    from unittest import mock
    real_empty, real_like = torch.empty, torch.empty_like

    def fresh(t):
        if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16):
            poison_(t)
        return t

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(torch, "empty", lambda *a, **k: fresh(real_empty(*a, **k))))
    stack.enter_context(mock.patch.object(torch, "empty_like", lambda *a, **k: fresh(real_like(*a, **k))))
    return stack


def sim_index_error(e: BaseException) -> tuple[int, int, int] | None:
    """(index, axis, size) of the simulator's out-of-bounds IndexError, else None. On a GPU the same
    access reads or writes someone else's memory; checkers turn it into what the index means."""
    import re
    m = re.search(r"index (-?\d+) is out of bounds for axis (\d+) with size (\d+)", str(e))
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
