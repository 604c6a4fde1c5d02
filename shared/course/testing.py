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
