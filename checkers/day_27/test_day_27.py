"""Day 27 checker: flash-decoding (split-KV decode attention). Run: pytest checkers/day_27

Same contract as day 20's decode_attention, so the oracle is shared.reference.decode_attention.
What is new to check: chunk edges (lengths just below, at and past a chunk boundary), splits that
start past cache_len (they must add nothing), the merge across splits, GQA groups whose size is not
the number of KV heads, fp32 partials (an fp16 scratch loses digits that cancel in the merge), and
that one launch configuration is right at every length (the split count must not come from cache_len).
"""
import functools
import gc

import pytest
import torch

from shared import reference
from shared.course.registry import Ops, day_module
from shared.course.testing import assert_close, graph_us, no_host_reads, poison_, randn, record_bench, tol

DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module")
def bs(sizes):
    """Threads per split block: few in the simulator (one OS thread each), the default on a GPU."""
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


def _call(day, q, k, v, cache_len, **knobs):
    return day.decode_attention(q, k, v, cache_len, **knobs)


# (H, KV, hd, max_seq, splits, [lengths]): with max_seq 40 and 3 splits the chunk is 14 keys:
# 14 fills the first split exactly, 15 spills one key into the second, and at 1 and 14 the later
# splits are empty; auto splits with GQA 9/3; hd 12 is not a multiple of 8 (no 16-byte loads).
TINY = [(4, 2, 16, 40, 3, [1, 14, 15, 40]),
        (9, 3, 8, 20, 0, [13]),
        (4, 2, 12, 24, 5, [11])]
REAL = [(9, 3, 64, 4096, 0, [1, 127, 128, 129, 1001, 4095, 4096]),
        (9, 3, 64, 4096, 13, [1, 315, 316, 317, 3000]),
        (32, 8, 64, 2048, 0, [1, 777, 2048]),
        (32, 8, 128, 4096, 0, [3333]),
        (4, 2, 40, 1000, 0, [999])]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_at_many_lengths(day, sizes, device, bs, dtype):
    """Every length, chunk edges included; NaN past cache_len must not leak in."""
    for i, (H, KV, hd, max_seq, splits, lengths) in enumerate(sizes(tiny=TINY, real=REAL)):
        for n in lengths:
            q, k, v, cache_len = _case(H, KV, hd, max_seq, n, dtype, device, seed=10 * i + n)
            out = _call(day, q, k, v, cache_len, splits=splits, block_size=bs)
            assert out.dtype == q.dtype, f"output dtype {out.dtype}, expected q's dtype {q.dtype}"
            assert_close(out, reference.decode_attention(q, k, v, cache_len),
                         f"decode_attention H={H} KV={KV} hd={hd} cache_len={n}/{max_seq} splits={splits or 'auto'} "
                         f"{dtype}", **tol(dtype, 5))


@pytest.mark.parametrize("knobs", [dict(splits=1), dict(splits=2, block_size=64, merge_block=64),
                                   dict(splits=6, merge_block=32), dict(splits=12)])
def test_any_knob_setting(day, sizes, device, knobs):
    """One split is day 20's algorithm; many short splits are mostly merge; blocks of other sizes."""
    H, KV, hd, max_seq, n = sizes(tiny=(4, 2, 16, 37, 30), real=(9, 3, 64, 2048, 2000))
    knobs = dict(knobs, block_size=knobs.get("block_size", sizes(tiny=32, real=128)))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, n, torch.float32, device, seed=knobs["splits"])
    assert_close(_call(day, q, k, v, cache_len, **knobs), reference.decode_attention(q, k, v, cache_len),
                 f"decode_attention {knobs} cache_len={n}/{max_seq}", **tol(torch.float32, 5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_values_past_cache_len_are_not_read(day, sizes, device, bs, dtype):
    """Huge keys past the end would win the softmax if a chunk ran past cache_len."""
    H, KV, hd, max_seq, n = sizes(tiny=(4, 2, 16, 32, 9), real=(9, 3, 64, 1024, 513))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, n, dtype, device, seed=3, tail="huge")
    assert_close(_call(day, q, k, v, cache_len, splits=4, block_size=bs), reference.decode_attention(q, k, v, cache_len),
                 f"decode_attention with huge values at positions >= cache_len={n} ({dtype})", **tol(dtype, 5))


def test_very_negative_scores_with_empty_splits(day, sizes, device, bs):
    """Every score near -120: exp(score) underflows to 0 in fp32. Splits past cache_len hold no
    keys, so their max is -inf (weight 0), not 0 -- a 0 would become the merge's max M and
    exp(m_s - M) of every real split would underflow to nothing."""
    H, KV, hd, max_seq, n = sizes(tiny=(4, 2, 16, 40, 6), real=(9, 3, 64, 2048, 300))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, n, torch.float32, device, seed=8)
    k = 1.0 + 0.05 * k                              # every key close to all-ones ...
    q = -120.0 / hd ** 0.5 + 0.5 * q                 # ... so q . k / sqrt(hd) is close to -120
    for splits in (4, 0):
        assert_close(_call(day, q, k, v, cache_len, splits=splits, block_size=bs),
                     reference.decode_attention(q, k, v, cache_len),
                     f"decode_attention with scores near -120 and splits past cache_len={n} (splits={splits})",
                     **tol(torch.float32, 10))


@pytest.mark.parametrize("H,KV", [(8, 2), (12, 4)])
def test_gqa_group_is_h_over_kv_not_kv(day, sizes, device, bs, H, KV):
    """Query head h reads KV head h // (H / KV). With H / KV == KV (9 / 3, 4 / 2) a kernel that used
    KV as the group size would pass; 8 / 2 (groups of 4) and 12 / 4 (groups of 3) do not."""
    hd, max_seq = sizes(tiny=(16, 30), real=(64, 2048))
    for n, splits in sizes(tiny=((29, 3), (7, 0)), real=((2000, 0), (70, 0), (1500, 7))):
        q, k, v, cache_len = _case(H, KV, hd, max_seq, n, torch.float32, device, seed=H + n)
        assert_close(_call(day, q, k, v, cache_len, splits=splits, block_size=bs),
                     reference.decode_attention(q, k, v, cache_len),
                     f"decode_attention H={H} KV={KV} (groups of {H // KV}) cache_len={n}/{max_seq} "
                     f"splits={splits or 'auto'}", **tol(torch.float32, 5))


def test_split_partials_keep_fp32_precision(day, sizes, device, bs):
    """fp16 inputs, values near +1000 in the first half of the keys and -1000 in the second, near-uniform
    weights: each split's acc is large, the merged output small. Partials (m, l, acc) kept in fp16
    (q's dtype) lose ~0.5 per split in that cancellation; fp32 partials keep the output exact to fp16."""
    H, KV, hd, max_seq, n = sizes(tiny=(12, 4, 16, 40, 36), real=(12, 4, 64, 4096, 4000))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, n, torch.float16, device, seed=21, tail=None)
    q = (0.05 * q.float()).half()                                   # near-uniform softmax weights
    sign = torch.where(torch.arange(max_seq, device=device) < n // 2, 1000.0, -1000.0)
    v = (v.float() + sign[None, :, None]).half()
    for splits in sizes(tiny=(4,), real=(0, 16)):
        assert_close(_call(day, q, k, v, cache_len, splits=splits, block_size=bs),
                     reference.decode_attention(q, k, v, cache_len),
                     f"decode_attention with large values that cancel across splits (splits={splits or 'auto'}, "
                     "fp16 inputs): are m, l and acc of each split kept in fp32?", **tol(torch.float16, 5))


def test_large_scores_stay_finite(day, sizes, device, bs):
    """Scores in the hundreds overflow exp() unless each split subtracts its max."""
    H, KV, hd, max_seq, n = sizes(tiny=(4, 2, 16, 24, 23), real=(9, 3, 64, 512, 300))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, n, torch.float32, device, seed=7)
    q *= 100.0
    assert_close(_call(day, q, k, v, cache_len, splits=3, block_size=bs), reference.decode_attention(q, k, v, cache_len),
                 "decode_attention with large scores (did every split subtract its max?)", **tol(torch.float32, 10))


def test_same_buffers_replay_at_new_lengths(day, sizes, device, bs):
    """Like a CUDA graph replay: only the contents of cache_len change between calls (and the
    knobs stay at their defaults: the split count must come from the shapes)."""
    H, KV, hd, max_seq = sizes(tiny=(4, 2, 16, 24), real=(9, 3, 64, 8192))
    q, k, v, cache_len = _case(H, KV, hd, max_seq, 1, torch.float32, device, seed=11, tail=None)
    for n in sizes(tiny=(5, 24, 1), real=(5, 8192, 1, 4000, 129)):
        cache_len.fill_(n)
        assert_close(_call(day, q, k, v, cache_len, block_size=bs), reference.decode_attention(q, k, v, cache_len),
                     f"decode_attention after cache_len was set to {n} in place")


def test_cache_len_is_read_on_the_device_not_the_host(day, sizes, device, bs):
    """.item() / int() / .tolist() on cache_len syncs the GPU and bakes the length into the launch
    (choosing the split count from it does too)."""
    q, k, v, cache_len = _case(4, 2, 16, 20, 6, torch.float32, device, seed=5)
    expected = reference.decode_attention(q, k, v, cache_len)
    with no_host_reads():
        out = _call(day, q, k, v, cache_len, block_size=bs)
    assert_close(out, expected, "decode_attention output")


def test_bad_inputs_raise_value_error(day, device):
    q = torch.zeros(4, 16, device=device)
    kc = torch.zeros(2, 8, 16, device=device)
    n = torch.tensor([3], dtype=torch.int32, device=device)
    for args, knobs, what in [((q, kc, kc, 3), {}, "cache_len as a Python int"),
                              ((q, kc, kc, torch.tensor([3.0], device=device)), {}, "cache_len float"),
                              ((torch.zeros(3, 16, device=device), kc, kc, n), {}, "H=3 not a multiple of KV=2"),
                              ((q, torch.zeros(2, 8, 8, device=device), torch.zeros(2, 8, 8, device=device), n), {},
                               "head_dim mismatch"),
                              ((q[None], kc, kc, n), {}, "q with a T dimension"),
                              ((q, kc, kc, n), dict(block_size=48), "block_size 48 (not a power of two)"),
                              ((q, kc, kc, n), dict(splits=-1), "splits=-1"),
                              ((q, kc, kc, n), dict(splits=9), "more splits than cache positions")]:
        with pytest.raises(ValueError):
            day.decode_attention(*args, **knobs)
            pytest.fail(f"decode_attention accepted {what}; raise ValueError")


# ---- the engine: generation with the cache == generation without it -----------------------------------
def test_cached_generation_equals_recompute_on_the_tiny_model(day, ops, track, tiny_model, sizes, device, bs):
    """Greedy tokens and every step's logits agree whether the prefix is cached or recomputed."""
    from shared.engine.attention import NoCache, StaticCache
    from shared.engine.runner import ModelRunner
    table = {n: getattr(reference, n) for n in reference.__all__}
    table.update(decode_attention=functools.partial(day.decode_attention, block_size=bs), kv_write=ops.kv_write)
    mixed = Ops(track, overrides=table)
    weights = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    weights.inv_freq = reference.rope_frequencies(weights.config).to(device)
    prompt = torch.randint(3, 259, (5,), generator=torch.Generator().manual_seed(0)).tolist()
    n = sizes(tiny=3, real=40)
    backend = StaticCache(mixed, weights.config, len(prompt) + n, weights.dtype, device)
    poison_(backend.kv.k), poison_(backend.kv.v)
    runs = []
    for runner in (ModelRunner(mixed, weights, backend, device), ModelRunner(mixed, weights, NoCache(mixed), device)):
        steps = []

        def remember(logits):
            steps.append(logits.float().cpu())
            return reference.sample(logits)

        runs.append((list(reference.generate(runner.next_logits, prompt, max_new_tokens=n, sample=remember)), steps))
    (cached, cached_logits), (plain, plain_logits) = runs
    for i, (a, b) in enumerate(zip(cached_logits, plain_logits)):
        assert_close(a, b, f"logits of new token {i} with the KV cache vs recomputing the prefix", atol=1e-4, rtol=1e-4)
    assert cached == plain, f"cached greedy tokens {cached} != recomputed {plain}"


# ---- GPU only -------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_no_host_sync(day, device):
    """torch's sync debug mode raises if anything in the call synchronizes the GPU with the host."""
    q, k, v, cache_len = _case(9, 3, 64, 1024, 700, torch.float16, device, seed=1)
    expected = reference.decode_attention(q, k, v, cache_len)
    day.decode_attention(q, k, v, cache_len)       # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = day.decode_attention(q, k, v, cache_len)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(out, expected, "decode_attention", **tol(torch.float16, 5))


@pytest.mark.gpu
@pytest.mark.parametrize("H,KV", [(9, 3), (32, 8)])
def test_one_captured_graph_replays_at_every_length(day, device, H, KV):
    """Capture the call once in a CUDA graph, then change only cache_len: each replay must give
    that length's attention (a split count or chunk taken from cache_len at capture time would not)."""
    max_seq = 4096
    q, k, v, cache_len = _case(H, KV, 64, max_seq, 37, torch.float16, device, seed=2, tail=None)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):                  # warm-up: compile outside the capture
        day.decode_attention(q, k, v, cache_len)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    gc.disable()                                   # no finalizer may free CUDA memory mid-capture
    try:
        with torch.cuda.graph(graph, stream=side):
            out = day.decode_attention(q, k, v, cache_len)
    finally:
        gc.enable()
    for n in (1, 4096, 37, 1500, 129, 4095):
        cache_len.fill_(n)
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, reference.decode_attention(q, k, v, cache_len),
                     f"graph captured at cache_len=37, replayed at {n}", **tol(torch.float16, 5))


LENGTHS = (512, 1024, 2048, 4096, 8192)
LAYOUTS = {"smollm2_H9_KV3": (9, 3, 64), "llama1b_H32_KV8": (32, 8, 64)}


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_split_kv_vs_day_20(day, device):
    """The point of the day: at 8k context, day 20's H blocks leave most SMs idle; split-KV fills
    them. Same run, same inputs, both replayed from CUDA graphs: day 20's solution vs this
    decode_attention, B=1, fp16, max_seq 8192, at lengths 512 .. 8192."""
    base = day_module(20, "solutions").decode_attention
    result = {"gpu": torch.cuda.get_device_name(), "dtype": "fp16", "max_seq": 8192, "timing": "CUDA graph replay",
              "unit": "us per call"}
    for name, (H, KV, hd) in LAYOUTS.items():
        q, k, v, cache_len = _case(H, KV, hd, 8192, 8192, torch.float16, device, seed=4, tail=None)
        for n in LENGTHS:
            cache_len.fill_(n)
            assert_close(day.decode_attention(q, k, v, cache_len), reference.decode_attention(q, k, v, cache_len),
                         f"decode_attention {name} cache_len={n}", **tol(torch.float16, 5))
            t20 = graph_us(lambda: base(q, k, v, cache_len))
            t27 = graph_us(lambda: day.decode_attention(q, k, v, cache_len))
            result[f"{name}_n{n}_day20_us"] = round(t20, 2)
            result[f"{name}_n{n}_day27_us"] = round(t27, 2)
            result[f"{name}_n{n}_speedup"] = round(t20 / t27, 2)
    record_bench("day_27_flash_decoding", result)
    for name in LAYOUTS:
        speedup = result[f"{name}_n8192_speedup"]
        assert speedup >= 2, (f"{name}: split-KV decode is only {speedup:.2f}x faster than day 20 at 8192 keys: "
                              "is the grid (splits, KV heads) big enough to fill the SMs?")


SHORT = 70          # the engine's case in issue 14: a short chat, a cache sized for 1024 tokens
SHORT_FLOOR = 0.6   # x day 20's one-kernel speed at SHORT keys: a split kernel whose blocks cost the same at any
                    # live length (plus its merge) ran at about 0.4x; beating day 20 (1.0) is issue 14's goal


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_short_context(day, device):
    """What a decode step pays at the start of a chat: 70 cached keys in a cache of 1024, B=1, fp16,
    replayed from CUDA graphs in this run, against day 20's kernel. The split count comes from the
    shapes (1024 keys), so a kernel whose blocks cost the same whatever the live length pays for
    1024 keys here; one whose work follows the live length does not."""
    base = day_module(20, "solutions").decode_attention
    result = {"gpu": torch.cuda.get_device_name(), "dtype": "fp16", "max_seq": 1024, "cache_len": SHORT,
              "timing": "CUDA graph replay", "unit": "us per call"}
    for name, (H, KV, hd) in LAYOUTS.items():
        q, k, v, cache_len = _case(H, KV, hd, 1024, SHORT, torch.float16, device, seed=5, tail=None)
        assert_close(day.decode_attention(q, k, v, cache_len), reference.decode_attention(q, k, v, cache_len),
                     f"decode_attention {name} cache_len={SHORT}", **tol(torch.float16, 5))
        t20 = graph_us(lambda: base(q, k, v, cache_len))
        t27 = graph_us(lambda: day.decode_attention(q, k, v, cache_len))
        result[f"{name}_day20_us"] = round(t20, 2)
        result[f"{name}_day27_us"] = round(t27, 2)
        result[f"{name}_speedup"] = round(t20 / t27, 2)
    record_bench("day_27_flash_decoding_short", result)
    for name in LAYOUTS:
        speedup = result[f"{name}_speedup"]
        assert speedup >= SHORT_FLOOR, (f"{name}: at {SHORT} keys split-KV decode runs at {speedup:.2f}x day 20's speed: does "
                              "each block's work follow the live length (a team per key, a running softmax), and "
                              "does the merge read only the splits that hold keys?")
