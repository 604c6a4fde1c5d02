"""Day 20 checker: decode_attention over the static KV cache. Run: pytest checkers/day_20"""
import functools
import threading
import time

import pytest
import torch

from shared import reference
from shared.course.registry import Ops
from shared.course.testing import assert_close, poison_, randn, record_bench, tol

DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module")
def bs(sizes):
    """Threads per block: few in the simulator (one OS thread each), the default on a GPU."""
    return sizes(tiny=32, real=128)


def _case(H, KV, hd, max_seq, n, dtype, device, seed, tail="nan"):
    """Random q and caches; positions >= n hold garbage that must never reach the output."""
    q = randn(H, hd, dtype=dtype, device=device, seed=seed)
    k = randn(KV, max_seq, hd, dtype=dtype, device=device, seed=seed + 1)
    v = randn(KV, max_seq, hd, dtype=dtype, device=device, seed=seed + 2)
    if tail is not None:
        garbage = float("nan") if tail == "nan" else (6e4 if dtype == torch.float16 else 1e30)
        k[:, n:], v[:, n:] = garbage, garbage
    return q, k, v, torch.tensor([n], dtype=torch.int32, device=device)


def _expected(q, k, v, cache_len):
    return reference.decode_attention(q, k, v, cache_len)   # reads only the first cache_len positions


# (H, KV, hd, max_seq, n): length 1, odd lengths longer than a block, the full cache, GQA 9/3, and
# GQA 8/2 and 12/4, where the group size H / KV differs from KV (in 4/2 and 9/3 they are equal)
TINY = [(4, 2, 16, 8, 1), (4, 2, 16, 40, 37), (4, 2, 16, 24, 24), (9, 3, 8, 20, 13), (8, 2, 8, 12, 7),
        (12, 4, 8, 10, 10)]
REAL = [(9, 3, 64, 2048, 1), (9, 3, 64, 2048, 1001), (9, 3, 64, 2048, 2048), (32, 8, 128, 4096, 3333),
        (12, 4, 64, 1024, 777)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_and_ignores_the_tail(day, sizes, device, bs, dtype):
    """Scores in fp32 over exactly the first cache_len positions; NaN past the end must not leak in."""
    for i, (H, KV, hd, max_seq, n) in enumerate(sizes(tiny=TINY, real=REAL)):
        q, k, v, cache_len = _case(H, KV, hd, max_seq, n, dtype, device, seed=10 * i)
        out = day.decode_attention(q, k, v, cache_len, block_size=bs)
        assert out.dtype == q.dtype, f"output dtype {out.dtype}, expected q's dtype {q.dtype}"
        assert_close(out, _expected(q, k, v, cache_len),
                     f"decode_attention H={H} KV={KV} hd={hd} cache_len={n}/{max_seq} {dtype}", **tol(dtype, 5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_values_past_cache_len_are_not_read(day, sizes, device, bs, dtype):
    """Huge keys past the end would win the softmax if you masked the wrong positions (off by one)."""
    H, KV, hd, max_seq, n = sizes(tiny=(4, 2, 16, 32, 9), real=(9, 3, 64, 1024, 513))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, n, dtype, device, seed=3, tail="huge")
    assert_close(day.decode_attention(q, k, v, cache_len, block_size=bs), _expected(q, k, v, cache_len),
                 f"decode_attention with huge values at positions >= cache_len={n} ({dtype})", **tol(dtype, 5))


@pytest.mark.parametrize("block_size", [32, 64])
def test_any_block_size_and_lengths_not_a_multiple_of_it(day, sizes, device, block_size):
    """A few threads striding over many positions: each block reduces max and sum with barriers."""
    H, KV, hd, max_seq, n = sizes(tiny=(4, 2, 16, 80, 75), real=(9, 3, 64, 4096, 4095))
    for bs in sizes(tiny=[block_size], real=[block_size, 4 * block_size]):
        q, k, v, cache_len = _case(H, KV, hd, max_seq, n, torch.float32, device, seed=bs)
        assert_close(day.decode_attention(q, k, v, cache_len, block_size=bs), _expected(q, k, v, cache_len),
                     f"decode_attention block_size={bs} cache_len={n}", **tol(torch.float32, 5))


def test_large_scores_stay_finite(day, sizes, device, bs):
    """Scores in the hundreds overflow exp() in fp32 unless you subtract the max first (stable softmax)."""
    H, KV, hd, max_seq, n = sizes(tiny=(4, 2, 16, 16, 11), real=(9, 3, 64, 512, 300))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, n, torch.float32, device, seed=7)
    q *= 100.0
    assert_close(day.decode_attention(q, k, v, cache_len, block_size=bs), _expected(q, k, v, cache_len),
                 "decode_attention with large scores (did you subtract the max?)", **tol(torch.float32, 10))


def test_same_buffers_replay_at_a_new_length(day, device, bs):
    """Like a CUDA graph replay: only the contents of cache_len change between two calls."""
    q, k, v, cache_len = _case(4, 2, 16, 24, 5, torch.float32, device, seed=11, tail=None)
    for n in (5, 18):
        cache_len.fill_(n)
        assert_close(day.decode_attention(q, k, v, cache_len, block_size=bs), _expected(q, k, v, cache_len),
                     f"decode_attention after cache_len was set to {n} in place")


def test_cache_len_is_read_on_the_device_not_the_host(day, device, bs, monkeypatch):
    """.item() / int() / .tolist() on cache_len syncs the GPU and bakes the length into the launch."""
    q, k, v, cache_len = _case(4, 2, 16, 12, 6, torch.float32, device, seed=5)
    expected = _expected(q, k, v, cache_len)
    main = threading.main_thread()

    def refuse(original):
        def host_read(self, *a, **kw):
            if threading.current_thread() is main:   # simulator kernel threads may index tensors
                raise AssertionError("decode_attention read a tensor on the host (.item()/int()/.tolist()): "
                                     "pass cache_len to the kernel and read cache_len[0] there")
            return original(self, *a, **kw)
        return host_read

    for name in ("item", "tolist", "__int__", "__index__", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse(getattr(torch.Tensor, name)))
    out = day.decode_attention(q, k, v, cache_len, block_size=bs)
    monkeypatch.undo()
    assert_close(out, expected, "decode_attention output")


def test_bad_inputs_raise_value_error(day, device):
    q = torch.zeros(4, 16, device=device)
    kc = torch.zeros(2, 8, 16, device=device)
    n = torch.tensor([3], dtype=torch.int32, device=device)
    for args, what in [((q, kc, kc, 3), "cache_len as a Python int"),
                       ((q, kc, kc, torch.tensor([3.0], device=device)), "cache_len float"),
                       ((torch.zeros(3, 16, device=device), kc, kc, n), "H=3 not a multiple of KV=2"),
                       ((q, torch.zeros(2, 8, 8, device=device), torch.zeros(2, 8, 8, device=device), n),
                        "head_dim mismatch"),
                       ((q[None], kc, kc, n), "q with a T dimension")]:
        with pytest.raises(ValueError):
            day.decode_attention(*args)
            pytest.fail(f"decode_attention accepted {what}; raise ValueError")


# ---- generation with the cache == generation without it ----------------------------------------------
def _ops_with(day, ops, track, bs):
    """Reference ops everywhere, except your decode_attention and the track's kv_write (day 19)."""
    table = {n: getattr(reference, n) for n in reference.__all__}
    table.update(decode_attention=functools.partial(day.decode_attention, block_size=bs), kv_write=ops.kv_write)
    return Ops(track, overrides=table)


def _runner(weights, ops, max_len, device):
    """The engine's runner: prefix recompute (max_len None) or the static-cache backend, whose
    never-written slots are NaN so reading one shows."""
    from shared.engine.attention import NoCache, StaticCache
    from shared.engine.runner import ModelRunner
    if max_len is None:
        return ModelRunner(ops, weights, NoCache(ops), device)
    backend = StaticCache(ops, weights.config, max_len, weights.dtype, device)
    poison_(backend.kv.k), poison_(backend.kv.v)
    return ModelRunner(ops, weights, backend, device)


def _greedy(next_logits, prompt, n):
    steps = []

    def remember(logits):
        steps.append(logits.float().cpu())
        return reference.sample(logits)

    return list(reference.generate(next_logits, prompt, max_new_tokens=n, sample=remember)), steps


def test_cached_generation_equals_recompute_on_the_tiny_model(day, ops, track, tiny_model, sizes, device, bs):
    """Greedy tokens and every step's logits agree whether the prefix is cached or recomputed."""
    mixed = _ops_with(day, ops, track, bs)
    weights = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    weights.inv_freq = reference.rope_frequencies(weights.config).to(device)
    prompt = torch.randint(3, 259, (5,), generator=torch.Generator().manual_seed(0)).tolist()
    n = sizes(tiny=5, real=40)
    cached, cached_logits = _greedy(_runner(weights, mixed, len(prompt) + n, device).next_logits, prompt, n)
    plain, plain_logits = _greedy(_runner(weights, mixed, None, device).next_logits, prompt, n)
    for i, (a, b) in enumerate(zip(cached_logits, plain_logits)):
        assert_close(a, b, f"logits of new token {i} with the KV cache vs recomputing the prefix", atol=1e-4, rtol=1e-4)
    assert cached == plain, f"cached greedy tokens {cached} != recomputed {plain}"


# ---- GPU only -------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_no_host_sync(day, device):
    """torch's sync debug mode raises if anything in the call synchronizes the GPU with the host."""
    q, k, v, cache_len = _case(9, 3, 64, 1024, 700, torch.float16, device, seed=1)
    expected = _expected(q, k, v, cache_len)
    day.decode_attention(q, k, v, cache_len)       # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = day.decode_attention(q, k, v, cache_len)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(out, expected, "decode_attention", **tol(torch.float16, 5))


def _timed_generate(engine, ids, n):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = list(engine.generate_ids(ids, max_new_tokens=n, ignore_eos=True))
    torch.cuda.synchronize()
    assert len(out) == n
    return time.perf_counter() - t


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_cached_vs_recompute(day, track, smollm2):
    """The point of the cache: each new token costs one token's work, not the whole prefix's.
    The cached path replays its decode step from a CUDA graph (day 23's idea, reference graphs
    here): eager, both loops pay ~400 Python launches per token and the cache barely shows -- that
    eager-vs-eager ratio is recorded too."""
    from shared.engine import Engine
    engine = Engine(str(smollm2), track=track, dtype="fp16", use_cache=True, graphs=False, paged=False)
    engine.ops = Ops(track, overrides={"decode_attention": day.decode_attention,
                                       "DecodeGraphs": reference.DecodeGraphs})
    short = engine.prompt_ids("Deep learning is")
    long = engine.prompt_ids(" ".join(["Deep learning is a field of machine learning."] * 120))[:1024]
    result = {"model": "SmolLM2-135M", "dtype": "fp16", "gpu": torch.cuda.get_device_name(),
              "short_prompt_tokens": len(short), "long_prompt_tokens": len(long)}
    modes = {"graph": (True, True), "cached": (True, False), "recompute": (False, False)}
    for label, ids, n in (("short", short, 50), ("long", long, 50)):
        for mode, (cache, graphs) in modes.items():
            engine.use_cache, engine.use_graphs = cache, graphs
            _timed_generate(engine, ids, 4)           # warm-up: compile, capture
            result[f"{label}_{mode}_s_{n}"] = _timed_generate(engine, ids, n)
        result[f"{label}_speedup_graphed_{n}"] = result[f"{label}_recompute_s_{n}"] / result[f"{label}_graph_s_{n}"]
        result[f"{label}_speedup_eager_{n}"] = result[f"{label}_recompute_s_{n}"] / result[f"{label}_cached_s_{n}"]
    record_bench("day_20_cached_vs_recompute", result)
    assert result["short_speedup_graphed_50"] >= 2, (
        f"cached + graphed decode is only {result['short_speedup_graphed_50']:.2f}x faster than recomputing the "
        "prefix for 50 tokens from 'Deep learning is': is every step re-running the whole prompt?")
    # Eager, both loops are bound by ~400 Python launches per token, and with flash attention
    # (days 25-26) a 1024-token recompute costs little more than a decode step: the eager ratio is
    # recorded, the graphed one is the check.
    assert result["long_speedup_graphed_50"] >= 2, (
        f"cached + graphed decode is only {result['long_speedup_graphed_50']:.2f}x faster than recomputing a "
        "1024-token prefix: is every step re-running the whole prompt?")
