"""Day 23 checker: DecodeGraphs -- capture the decode step once per key, replay it. Run: pytest checkers/day_23

Sim tier (no graphs there): the bucket rule, and the discipline -- run() follows the buffers on
every call and asks step() for the right (batch, bucket). GPU: capture, replay after the buffers
change (no stale values), one capture per key, and graph == eager token for token.
"""
import gc
import time

import pytest
import torch

from shared import reference
from shared.course.registry import Ops
from shared.course.testing import assert_close, no_host_reads, randn, record_bench
from shared.runtime import gpu
from numba import cuda


def _fresh_kernel():
    """A kernel never launched before: its first launch compiles and loads it."""
    @cuda.jit
    def scale_shift(x, pos, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = x[i] * 2.0 + pos[0]
    return scale_shift


class ToyStep:
    """A decode step in miniature: reads the fixed buffers x and pos, writes a new output."""

    def __init__(self, device, n=37):
        self.x = torch.zeros(n, device=device)
        self.pos = torch.zeros(1, dtype=torch.int32, device=device)
        self.kernel = _fresh_kernel()
        self.keys = []

    def __call__(self, batch_size, bucket):
        self.keys.append((batch_size, bucket))
        out = torch.empty_like(self.x)
        gpu.launch(self.kernel, gpu.cdiv(out.shape[0], 32), 32, self.x, self.pos, out)
        return out

    def set(self, seed, position):
        """What the runner does before each step: new values into the same buffers."""
        self.x.copy_(randn(self.x.shape[0], device=self.x.device, seed=seed))
        self.pos.fill_(position)
        return self.x * 2.0 + position


class LazyStep(ToyStep):
    """A step whose first call does one-time setup that waits for the GPU, as a library creating
    its handle on first use may: a capture cannot contain that, so it must happen in the warm-up."""

    def __init__(self, device):
        super().__init__(device)
        self.ready = False

    def __call__(self, batch_size, bucket):
        if not self.ready:
            torch.cuda.synchronize()
            self.ready = True
        return super().__call__(batch_size, bucket)


@pytest.mark.parametrize("max_len,min_bucket,cases", [
    (1000, 64, {1: 64, 64: 64, 65: 128, 300: 512, 512: 512, 513: 1000, 1000: 1000}),
    (4096, 256, {1: 256, 257: 512, 2048: 2048, 2049: 4096, 4096: 4096}),
    (100, 256, {1: 100, 100: 100}),
])
def test_bucket(day, device, max_len, min_bucket, cases):
    graphs = day.DecodeGraphs(ToyStep(device), max_len=max_len, min_bucket=min_bucket)
    got = {n: graphs.bucket(n) for n in cases}
    assert got == cases, f"bucket(length) with min_bucket={min_bucket}, max_len={max_len}: got {got}, expected {cases}"
    for bad in (0, max_len + 1):
        with pytest.raises(ValueError):
            graphs.bucket(bad)


@pytest.mark.parametrize("kw", [dict(max_len=0), dict(max_len=16, min_bucket=0), dict(max_len=16, warmup=0)])
def test_bad_settings_raise_value_error(day, device, kw):
    with pytest.raises(ValueError):
        day.DecodeGraphs(ToyStep(device), **kw)


def test_run_follows_the_buffers_and_asks_for_the_right_key(day, device):
    """Every run() reflects what is in the buffers *now* (a graph replays; it does not hand back
    an old output), and step() is only ever asked for (batch_size, bucket(length))."""
    step = ToyStep(device)
    graphs = day.DecodeGraphs(step, max_len=512, min_bucket=16)
    lengths = [3, 3, 9, 16, 17, 40, 17, 300, 5]
    for i, n in enumerate(lengths):
        want = step.set(seed=i, position=n - 1)
        out = graphs.run(1, n)
        assert_close(out, want, f"run(1, {n}) after new values in the buffers (step {i})", atol=1e-6, rtol=1e-6)
        assert step.keys and step.keys[-1][0] == 1, "step() must get the batch size first"
    expected = {(1, graphs.bucket(n)) for n in lengths}
    assert set(step.keys) == expected, f"step() was asked for keys {sorted(set(step.keys))}, expected {sorted(expected)}"
    want = step.set(seed=99, position=7)
    assert_close(graphs.run(2, 8), want, "run(2, 8): a new batch size", atol=1e-6, rtol=1e-6)
    assert step.keys[-1] == (2, 16), f"run(2, 8) must ask step for (2, bucket(8)) = (2, 16), got {step.keys[-1]}"


def _tiny_runner(day, tiny_model, device, graphs: bool):
    """A runner on the tiny model with reference kernels (fast in the simulator) and YOUR graphs."""
    from shared.engine.attention import StaticCache
    from shared.engine.runner import ModelRunner
    ops = Ops("solutions", overrides={**{n: getattr(reference, n) for n in reference.__all__},
                                      "DecodeGraphs": day.DecodeGraphs})
    w = reference.load_model(tiny_model, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    backend = StaticCache(ops, w.config, 64, torch.float32, device)
    return ModelRunner(ops, w, backend, device, graphs_cls=day.DecodeGraphs if graphs else None)


def test_decode_step_with_your_graphs_equals_eager_and_reads_no_host_values(day, tiny_model, device):
    """The engine's decode step through your DecodeGraphs, with every host read made to raise
    (that is what a capture forbids): the logits equal the eager step's, step after step."""
    prompt = [72, 105, 33, 32, 200, 7]
    eager, graphed = _tiny_runner(day, tiny_model, device, False), _tiny_runner(day, tiny_model, device, True)
    ids = list(prompt)
    for step in range(6):
        want = eager.next_logits(ids)
        if step == 0:
            got = graphed.next_logits(ids)
        else:
            with no_host_reads():
                got = graphed.next_logits(ids)
        assert_close(got, want, f"logits at decode step {step}", atol=1e-5, rtol=1e-5)
        ids.append(int(torch.argmax(want)))


# ---- GPU: real graphs ------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_one_capture_per_key_and_replay_after_the_buffers_change(day, device):
    step = ToyStep(device)
    graphs = day.DecodeGraphs(step, max_len=256, min_bucket=16)
    for i, (b, n) in enumerate([(1, 5), (1, 6), (1, 16), (1, 17), (1, 30), (2, 4), (1, 7), (2, 15)]):
        want = step.set(seed=i, position=i * 11)
        out = graphs.run(b, n)
        assert_close(out, want, f"replay {i} of run({b}, {n}): stale values? the graph must read the buffers",
                     atol=1e-6, rtol=1e-6)
    assert graphs.captures == 3, (f"{graphs.captures} captures for keys (1,16), (1,32), (2,16): capture once "
                                  "per new (batch size, bucket), replay otherwise")
    assert len(graphs.graphs) == 3


class CaptureSpy(ToyStep):
    """A ToyStep that notes, for every call made while the current stream captures, whether the
    garbage collector was on; it also allocates a scratch buffer, as a real step does."""

    def __init__(self, device):
        super().__init__(device)
        self.gc_on_during_capture = []

    def __call__(self, batch_size, bucket):
        if torch.cuda.is_current_stream_capturing():
            self.gc_on_during_capture.append(gc.isenabled())
        scratch = torch.empty(1 << 18, device=self.x.device)     # 1 MiB: comes from the graph's pool
        scratch.fill_(0.0)
        return super().__call__(batch_size, bucket)


@pytest.mark.gpu
def test_capture_runs_with_the_garbage_collector_off(day, device):
    """A collection during a capture can run a finalizer that frees CUDA memory or synchronizes
    (a tensor caught in a reference cycle): illegal while the stream captures, and it strikes at
    random. The collector must be off for every capture (gc.disable()) and on again afterwards
    (gc.enable() in a finally)."""
    step = CaptureSpy(device)
    graphs = day.DecodeGraphs(step, max_len=64, min_bucket=16)
    gc.enable()                   # as in a program that never touched it
    try:
        for i, n in enumerate((5, 20, 40)):
            want = step.set(seed=i, position=n)
            assert_close(graphs.run(1, n), want, f"run(1, {n})", atol=1e-6, rtol=1e-6)
        collector_on_after = gc.isenabled()
    finally:
        gc.enable()
    seen = step.gc_on_during_capture
    assert len(seen) == 3, f"step() ran {len(seen)} times while a stream was capturing, expected 3 (one per new key)"
    assert not any(seen), (f"the garbage collector was on during {sum(seen)} of {len(seen)} captures: call "
                           "gc.disable() before capturing and gc.enable() in a finally")
    assert collector_on_after, "the garbage collector is still off after run(): gc.enable() once the capture ends"


@pytest.mark.gpu
def test_every_graph_shares_one_memory_pool(day, device, monkeypatch):
    """Graphs never replay at the same time, so they can share one memory pool
    (torch.cuda.graph_pool_handle()): a graph with a pool of its own keeps its own copy of every
    buffer the step allocates, once per batch size and bucket."""
    captured = []
    begin = torch.cuda.CUDAGraph.capture_begin

    def spy(self, *args, **kwargs):
        captured.append(self)
        return begin(self, *args, **kwargs)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", spy)
    step = CaptureSpy(device)
    graphs = day.DecodeGraphs(step, max_len=128, min_bucket=16)
    for i, (b, n) in enumerate([(1, 5), (1, 20), (1, 40), (2, 5), (1, 100)]):
        want = step.set(seed=i, position=n)
        assert_close(graphs.run(b, n), want, f"run({b}, {n})", atol=1e-6, rtol=1e-6)
    assert len(captured) == 5, f"{len(captured)} torch.cuda.CUDAGraph captures for 5 keys"
    pools = {g.pool() for g in captured}
    assert len(pools) == 1, (f"{len(captured)} graphs in {len(pools)} memory pools: make one "
                             "torch.cuda.graph_pool_handle() and pass it to every capture (pool=...)")


@pytest.mark.gpu
def test_one_time_setup_happens_in_the_warm_up(day, device):
    """The first call of a step may do things a capture forbids: warm up before capturing."""
    step = LazyStep(device)
    graphs = day.DecodeGraphs(step, max_len=64, min_bucket=16)
    want = step.set(seed=1, position=3)
    try:
        out = graphs.run(1, 5)
    except RuntimeError as e:
        pytest.fail(f"the first capture failed ({str(e).splitlines()[0]}): run step() a few times on the side "
                    "stream before capturing, so one-time setup happens outside the capture")
    assert_close(out, want, "run(1, 5) after the warm-up", atol=1e-6, rtol=1e-6)


def _engine(day, model, track, graphs):
    from shared.engine import Engine
    e = Engine(str(model), track=track, dtype="fp16", use_cache=True, graphs=False)
    e.ops = Ops(track, overrides={"DecodeGraphs": day.DecodeGraphs})
    e.use_graphs = graphs
    return e


PROMPTS = ["Deep learning is", "Écris un poème sur la mer 🌊 et le vent", "1, 2, 3, 4,"]


def _prompt_sets(engine):
    long = " ".join(["The history of computing is a story of layers built on layers."] * 60)
    sets = [engine.prompt_ids(p) for p in PROMPTS]
    sets.append(engine.prompt_ids("What is a KV cache?", chat=True))
    sets.append(engine.prompt_ids(long)[:min(600, engine.max_seq - 128)])   # > 512 where the model allows
    return sets


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["tiny_model", pytest.param("smollm2", marks=pytest.mark.model)])
def test_graph_equals_eager_token_for_token(day, track, request, model):
    """128 greedy tokens with graphs and without, on a short prompt, French with an emoji, the chat
    template and a prompt over 512 tokens (where the model's context allows)."""
    path = request.getfixturevalue(model)
    eager, graphed = _engine(day, path, track, False), _engine(day, path, track, True)
    for ids in _prompt_sets(eager):
        a = list(eager.generate_ids(ids, max_new_tokens=128, ignore_eos=True))
        b = list(graphed.generate_ids(ids, max_new_tokens=128, ignore_eos=True))
        assert a == b, f"graph replay differs from eager for a {len(ids)}-token prompt ({model})"


def _decode_tok_s(engine, ids, n):
    list(engine.generate_ids(ids, max_new_tokens=8, ignore_eos=True))     # warm-up: compile, capture
    torch.cuda.synchronize()
    list(engine.generate_ids(ids, max_new_tokens=n, ignore_eos=True))
    return engine.stats.decode_tok_s


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_graph_vs_eager_decode(day, smollm2, track):
    """The point of the day: the same kernels, one launch per token instead of ~400."""
    eager, graphed = _engine(day, smollm2, track, False), _engine(day, smollm2, track, True)
    ids = eager.prompt_ids("Deep learning is")
    result = {"model": "SmolLM2-135M", "dtype": "fp16", "gpu": torch.cuda.get_device_name(), "new_tokens": 128,
              "eager_tok_s": _decode_tok_s(eager, ids, 128), "graph_tok_s": _decode_tok_s(graphed, ids, 128)}
    result["speedup"] = result["graph_tok_s"] / result["eager_tok_s"]
    record_bench("day_23_graph_vs_eager", result)
    assert result["speedup"] >= 6, f"graph decode is only {result['speedup']:.1f}x eager (target 6x)"
