"""Day 22 checker: benchmark(engine) and the `tinyinfer bench` report. Run: pytest checkers/day_22"""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from shared.runtime import gpu
from shared.engine import Stats
from numba import cuda

FIELDS = ["prompt_tokens", "new_tokens", "warmup", "ttft_s", "prefill_tok_s", "decode_tok_s", "ms_per_token",
          "decode_vs_context", "prefill_vs_prompt", "peak_allocated_bytes", "peak_reserved_bytes",
          "launches_per_token", "launch_overhead_s", "launch_overhead_per_token_s"]
SMALL = dict(prompt_tokens=8, new_tokens=3, context_lengths=(8, 24), prompt_lengths=(4, 12), warmup=1,
             launch_samples=3)


@cuda.jit
def nothing():
    pass


class FakeEngine:
    """An engine whose clock is made up: prefill of P tokens takes 1 ms * P + 10 ms, a decode step at
    context C takes 5 ms + 0.1 ms * C. Prefill launches 2 kernels, every decode step 3. It emits only
    EOS, so a benchmark that does not ask for ignore_eos=True gets one token per run."""

    EOS = 2

    def __init__(self, max_seq=128):
        self.max_seq = max_seq
        self.config = SimpleNamespace(vocab_size=50)
        self.device = gpu.device()
        self.tokenizer = SimpleNamespace(eos_token_ids=[self.EOS])
        self.stats = Stats()
        self.calls = []

    @staticmethod
    def prefill_s(p):
        return 1e-3 * p + 1e-2

    @staticmethod
    def step_s(c):
        return 5e-3 + 1e-4 * c

    def generate_ids(self, prompt_ids, max_new_tokens=64, ignore_eos=False, **kw):
        assert all(0 <= i < self.config.vocab_size for i in prompt_ids), "prompt ids outside the vocabulary"
        self.calls.append((len(prompt_ids), max_new_tokens))
        self.stats = s = Stats(prompt_tokens=len(prompt_ids))
        now = 0.0
        for i in range(max_new_tokens):
            for _ in range(2 if i == 0 else 3):
                gpu.launch(nothing, 1, 1)
            now += self.prefill_s(len(prompt_ids)) if i == 0 else self.step_s(len(prompt_ids) + i)
            s.new_tokens += 1
            s.ttft_s = s.ttft_s or now
            s.total_s = now
            s.token_times.append(now)
            yield self.EOS
            if not ignore_eos and self.EOS in self.tokenizer.eos_token_ids:
                return


def _finite_positive(r, key):
    assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, \
        f"{key} = {r[key]!r}: expected a positive finite number"


def _check_fields(r, cfg):
    missing = [k for k in FIELDS if k not in r]
    assert not missing, f"benchmark result is missing {missing}"
    for k in ("ttft_s", "prefill_tok_s", "decode_tok_s", "ms_per_token", "launch_overhead_s"):
        _finite_positive(r, k)
    assert [p["context"] for p in r["decode_vs_context"]] == list(cfg["context_lengths"]), \
        "decode_vs_context: one entry per context length, in the order given"
    assert [p["prompt_tokens"] for p in r["prefill_vs_prompt"]] == list(cfg["prompt_lengths"]), \
        "prefill_vs_prompt: one entry per prompt length, in the order given"
    for p in r["decode_vs_context"]:
        _finite_positive(p, "decode_tok_s"), _finite_positive(p, "ms_per_token")
    for p in r["prefill_vs_prompt"]:
        _finite_positive(p, "prefill_s"), _finite_positive(p, "prefill_tok_s")
    assert r["launches_per_token"] >= 0 and math.isfinite(r["launches_per_token"])
    assert r["launch_overhead_per_token_s"] == pytest.approx(r["launches_per_token"] * r["launch_overhead_s"])
    json.dumps(r)   # the report is JSON: plain numbers, lists and dicts only


def test_fake_engine_numbers_are_exact(day):
    """With a made-up clock every number is known: TTFT, rates, per-context decode, prefill, launches."""
    eng = FakeEngine()
    r = day.benchmark(eng, **SMALL)
    _check_fields(r, SMALL)
    P, N = SMALL["prompt_tokens"], SMALL["new_tokens"]

    def decode_rate(p):   # N - 1 steps after the first token, at contexts p+1 .. p+N-1
        return (N - 1) / sum(eng.step_s(p + i) for i in range(1, N))

    assert r["ttft_s"] == pytest.approx(eng.prefill_s(P)), "ttft_s must come from engine.stats.ttft_s of the main run"
    assert r["prefill_tok_s"] == pytest.approx(P / eng.prefill_s(P)), "prefill_tok_s = prompt_tokens / ttft_s"
    assert r["decode_tok_s"] == pytest.approx(decode_rate(P)), \
        "decode_tok_s = (new_tokens - 1) / (total - ttft) -- did EOS stop the run early? ask for ignore_eos=True"
    assert r["ms_per_token"] == pytest.approx(1e3 / decode_rate(P))
    for p in r["decode_vs_context"]:
        assert p["decode_tok_s"] == pytest.approx(decode_rate(p["context"])), f"decode tok/s at context {p['context']}"
    for p in r["prefill_vs_prompt"]:
        assert p["prefill_s"] == pytest.approx(eng.prefill_s(p["prompt_tokens"])), \
            f"prefill_s at {p['prompt_tokens']} prompt tokens: the TTFT of that run"
    assert r["launches_per_token"] == pytest.approx(3.0), \
        f"launches_per_token = {r['launches_per_token']}: count launches per decode step (3 here), not prefill (2)"
    assert (r["peak_allocated_bytes"], r["peak_reserved_bytes"]) == (0, 0) or eng.device.type == "cuda"
    assert eng.tokenizer.eos_token_ids == [FakeEngine.EOS], "benchmark must not change the engine's EOS ids"
    measured = {(P, N)} | {(c, N) for c in SMALL["context_lengths"]} | {(p, 1) for p in SMALL["prompt_lengths"]}
    assert measured <= set(eng.calls), f"runs made {sorted(set(eng.calls))}, expected at least {sorted(measured)}"
    first_measured = eng.calls.index((P, N))
    assert first_measured >= SMALL["warmup"], (f"warmup={SMALL['warmup']}: {first_measured} generation(s) ran before "
                                               "the first measured one -- warm up first (the first runs compile kernels)")


def test_a_factory_works_too(day):
    made = []

    def factory():
        made.append(FakeEngine())
        return made[-1]

    r = day.benchmark(factory, **SMALL)
    assert len(made) == 1 and r["ttft_s"] == pytest.approx(FakeEngine.prefill_s(SMALL["prompt_tokens"]))


def test_launch_overhead_syncs_before_reading_the_clock(day, monkeypatch):
    """Launches are asynchronous: stopping the clock before the GPU has run them times only the
    queueing. The last clock read must come after a synchronize that follows the last launch."""
    import time
    events = []
    real_clock, real_launch = time.perf_counter, gpu.launch
    monkeypatch.setattr(time, "perf_counter", lambda: events.append("clock") or real_clock())
    monkeypatch.setattr(gpu, "launch", lambda *a, **k: events.append("launch") or real_launch(*a, **k))
    for mod, name in ((torch.cuda, "synchronize"), (cuda, "synchronize")):
        monkeypatch.setattr(mod, name, lambda *a, **k: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    import sys
    t = sys.modules[day.benchmark.__module__].launch_overhead_s(5)
    assert t > 0 and events.count("launch") >= 5, f"launch_overhead_s(5) must time 5 launches, saw {events}"
    last_launch = max(i for i, e in enumerate(events) if e == "launch")
    last_clock = max(i for i, e in enumerate(events) if e == "clock")
    assert "sync" in events[last_launch:last_clock], \
        "synchronize after the last launch and before reading the clock: launches return before the GPU runs them"


@pytest.mark.parametrize("bad", [dict(new_tokens=1), dict(context_lengths=(8, 200)), dict(prompt_lengths=(0,))])
def test_bad_arguments_raise_value_error(day, bad):
    with pytest.raises(ValueError):
        day.benchmark(FakeEngine(max_seq=128), **{**SMALL, **bad})


def test_tiny_model_engine_all_fields_plausible(day, tiny_model, track):
    from shared.engine import Engine
    engine = Engine(str(tiny_model), track=track)
    eos = list(engine.tokenizer.eos_token_ids)
    r = day.benchmark(engine, **SMALL)
    _check_fields(r, SMALL)
    if engine.device.type == "cuda":
        assert 0 < r["peak_allocated_bytes"] <= r["peak_reserved_bytes"], "peak allocated must be <= reserved"
    else:
        assert r["peak_allocated_bytes"] == r["peak_reserved_bytes"] == 0, "no GPU: report 0 bytes"
    assert engine.tokenizer.eos_token_ids == eos, "benchmark must not change the engine's EOS ids"


def test_bench_runner_writes_json_markdown_and_pngs(day, tiny_model, track, tmp_path):
    """`tinyinfer bench --model tiny` with your benchmark: cached, prefix-recompute and HF, then the report."""
    from shared import bench
    report = bench.run(str(tiny_model), track=track, contexts=[8, 16], prompt_lengths=[4, 8], prompt_tokens=8,
                       new_tokens=3, warmup=1, out_dir=tmp_path, benchmark_fn=day.benchmark, progress=False)
    from shared.engine import capabilities
    graphs = {"graph"} if capabilities(track).graphs else set()   # day 23 on a GPU: the graph-replayed engine too
    assert set(report["results"]) == {"cached", "naive", "hf"} | graphs
    for name in ("cached", "naive"):
        _check_fields(report["results"][name], dict(context_lengths=[8, 16], prompt_lengths=[4, 8]))
    for key in ("ttft_s", "decode_tok_s"):
        _finite_positive(report["results"]["hf"], key)
    saved = json.loads((tmp_path / "bench.json").read_text())
    for key in ("gpu_name", "model", "dtype", "contexts", "prompt_lengths", "warmup", "new_tokens"):
        assert key in saved["meta"], f"bench.json meta lacks {key}"
    md = (tmp_path / "bench.md").read_text()
    assert all(f"| {name} |" in md for name in ("cached", "naive", "hf")), "bench.md needs one row per engine"
    for png in ("decode_vs_context.png", "prefill_vs_prompt.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"


@pytest.mark.gpu
def test_gpu_memory_is_measured(day, tiny_model, track):
    from shared.engine import Engine
    engine = Engine(str(tiny_model), track=track)
    torch.cuda.empty_cache()
    r = day.benchmark(engine, **SMALL)
    assert 0 < r["peak_allocated_bytes"] <= r["peak_reserved_bytes"], "peak allocated must be > 0 and <= reserved"
