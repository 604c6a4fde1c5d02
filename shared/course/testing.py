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


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN (or a sentinel for ints) so an element a kernel forgot to write shows up."""
    return t.fill_(float("nan") if t.is_floating_point() else -12345)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "output", atol: float = 1e-5,
                 rtol: float = 1e-5) -> None:
    """torch.testing-style check with a message that says which element and how it went wrong."""
    assert isinstance(actual, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(actual).__name__}"
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    nan = torch.isnan(a) & ~torch.isnan(e)
    if nan.any():
        idx = tuple(int(i) for i in nan.nonzero()[0])
        raise AssertionError(f"{what}: NaN at index {idx} ({int(nan.sum())} of {a.numel()} elements) -- "
                             "an element never written (check your bounds guard / grid size) or 0/0, inf-inf")
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        err = (a - e).abs().nan_to_num(0).max().item()
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.numel()} elements differ; first at index {idx}: "
                             f"got {a[idx].item():.6g}, expected {e[idx].item():.6g} (max abs error {err:.3g}, "
                             f"atol={atol:g}, rtol={rtol:g})")


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


def graph_us(fn, calls: int = 20, reps: int = 20) -> float:
    """Microseconds per call of fn, replayed from a CUDA graph of `calls` calls: the GPU's time,
    not Python's launch overhead (the engine runs its decode step inside day 23's graph too)."""
    import gc
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()                                       # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    gc.disable()                                   # no finalizer may free CUDA memory mid-capture
    try:
        with torch.cuda.graph(graph, stream=side):
            for _ in range(calls):
                fn()
    finally:
        gc.enable()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * calls)


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
def run_kernel(fn, what: str = "output"):
    """fn() with the simulator's OverflowError turned into advice: on a GPU exp(1000) is inf and
    the softmax quietly becomes NaN; the simulator's float64 math.exp raises instead."""
    try:
        return fn()
    except OverflowError as e:
        raise AssertionError(f"math.exp overflowed: subtract the row max before exp ({what}: {e})") from None


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
            f"({a[idx].item():.6g} vs {b[idx].item():.6g}): a thread reads shared memory another thread has "
            "not finished writing -- a cuda.syncthreads() between the write and the read is missing")


def check_kernel(fn, expected: torch.Tensor, what: str = "output", atol: float = 1e-5, rtol: float = 1e-5):
    """Run fn() twice and compare the runs with each other first (a race), then with `expected`.

    A race in a reduction gives wrong values whose pattern looks like other mistakes (a max that
    started at 0, a missing max subtraction); the second launch tells them apart. Returns the output.
    """
    first = run_kernel(fn, what)
    assert_deterministic(first, run_kernel(fn, what), what)
    assert_close(first, expected, what, atol=atol, rtol=rtol)
    return first
