"""Day 24 checker: online softmax (a kernel) and blocked attention (PyTorch, chunk by chunk).
Run: pytest checkers/day_24

online_softmax is held to float64 within a few float32 roundings, not just "close": the online
rescale is exact math, so a one-pass softmax is as accurate as the three-pass one. Every kernel
runs twice (check_kernel): two runs that disagree mean a race in the merge tree."""
import math

import pytest
import torch

from shared import reference
from shared.course.testing import assert_close, check_kernel, randn, run_kernel, tol
from shared.runtime import gpu

DTYPES = [torch.float32, torch.float16]
F64 = dict(atol=1e-8, rtol=2e-6)     # fp32 math vs float64: a few roundings, never a lost term


def f64(cols, block_size):
    """F64, loosened for long rows: a thread's float32 running sum over n elements drifts by up to
    ~n roundings (measured: 3e-6 at 3000 elements per thread), the only error that grows."""
    return dict(atol=1e-8, rtol=max(2e-6, 2e-9 * -(-cols // block_size)))


def softmax64(x):
    """The naive three-pass softmax in float64 (a fully masked row gives zeros)."""
    return reference.softmax(x.double())


@pytest.fixture(scope="module")
def block_sizes(sizes):
    """Few threads in the simulator (one OS thread each); real blocks on a GPU."""
    return sizes(tiny=[1, 4, 16], real=[32, 256, 1024])


# ---- online_softmax --------------------------------------------------------------------------
def test_float32_matches_float64_on_rows_longer_than_the_block(day, sizes, device, block_sizes):
    """Odd row lengths, longer than the block: every thread folds several elements, then the tree merges."""
    for rows, cols in sizes(tiny=[(3, 37), (2, 100), (1, 1), (2, 5)], real=[(64, 1001), (4, 100003), (4096, 512)]):
        x = randn(rows, cols, device=device, seed=cols, scale=4.0)
        for bs in block_sizes:
            check_kernel(lambda: day.online_softmax(x, block_size=bs), softmax64(x),
                         f"online_softmax [{rows}, {cols}] block_size={bs} vs float64", **f64(cols, bs))


def test_float16_in_float16_out(day, sizes, device):
    rows, cols = sizes(tiny=(3, 45), real=(512, 4099))
    x = randn(rows, cols, dtype=torch.float16, device=device, seed=2, scale=4.0)
    out = check_kernel(lambda: day.online_softmax(x, block_size=8 if gpu.SIM else 128), reference.softmax(x),
                       f"online_softmax [{rows}, {cols}] float16", **tol(torch.float16))
    assert out.dtype == torch.float16, f"online_softmax returned {out.dtype} for a float16 input"


def test_the_max_keeps_growing(day, sizes, device):
    """An increasing row moves the running max at every element: each time, the sum so far must be
    rescaled by exp(m_old - m_new). A decreasing row never moves it (the other extreme)."""
    cols = sizes(tiny=50, real=5000)
    up = torch.linspace(-20, 30, cols, device=device)
    x = torch.stack([up, up.flip(0), up[torch.randperm(cols, generator=torch.Generator().manual_seed(0))]])
    for bs in (1, 4) if gpu.SIM else (32, 256):
        check_kernel(lambda: day.online_softmax(x, block_size=bs), softmax64(x),
                     f"online_softmax of increasing / decreasing / shuffled rows, block_size={bs} -- "
                     "rescale the running sum when the max grows", **f64(cols, bs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_masks_and_fully_masked_rows(day, device, dtype):
    """-inf entries get 0; a masked prefix must not poison the running sum (-inf - -inf = NaN);
    a fully masked row gives zeros, and so does the merge of two threads that saw only -inf."""
    x = randn(7, 40, dtype=dtype, device=device, seed=4, scale=3.0)
    x[0, 11:] = float("-inf")              # causal-style: row 0 sees its first 11 columns
    x[1, :29] = float("-inf")              # a masked prefix: every thread starts with -inf
    x[2] = float("-inf")                   # fully masked
    x[3, ::2] = float("-inf")
    x[4, :-1] = float("-inf")              # one finite element, last
    x[5, 1:] = float("-inf")               # one finite element, first
    x[6, 3:37] = float("-inf")
    for bs in (1, 4, 16):
        out = check_kernel(lambda: day.online_softmax(x, block_size=bs), softmax64(x).to(dtype),
                           f"online_softmax with -inf entries {dtype} block_size={bs}",
                           **(F64 if dtype == torch.float32 else tol(dtype)))
        assert (out[2] == 0).all(), f"a fully masked row must give zeros, got {out[2].tolist()[:5]}..."


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits(day, device, dtype):
    """Logits near +-1e4: exp overflows or underflows unless every exp is relative to the max."""
    x = randn(4, 33, device=device, seed=3, scale=1e4)
    x[2] = 1e4                              # equal huge values: uniform
    x[3] = randn(33, device=device, seed=9, scale=30.0) - 1e4
    x = x.to(dtype)
    check_kernel(lambda: day.online_softmax(x, block_size=4), softmax64(x).to(dtype), f"online_softmax of large logits {dtype}",
                 **(F64 if dtype == torch.float32 else tol(dtype)))


def test_strided_input_one_kernel_new_output(day, device):
    """A transposed view reads right; the work is ONE launch (a kernel, not torch.softmax); x is untouched."""
    base = randn(30, 6, device=device, seed=6, scale=3.0)
    before = base.clone()
    launches = gpu.LAUNCHES
    out = run_kernel(lambda: day.online_softmax(base.t(), block_size=8), "online_softmax of a transposed view")
    assert gpu.LAUNCHES - launches == 1, (f"online_softmax launched {gpu.LAUNCHES - launches} kernels through "
                                          "gpu.launch: write one kernel (one block per row)")
    assert_close(out, softmax64(base.t()).float(), "online_softmax of a transposed view", **F64)
    assert torch.equal(base, before), "online_softmax must not modify its input"


@pytest.mark.parametrize("bad", ["1-D", "3-D", "int", "block_size=3", "block_size=2048"])
def test_bad_inputs_raise_value_error(day, device, bad):
    x = torch.zeros(2, 8, device=device)
    args = {"1-D": (torch.zeros(8, device=device), {}), "3-D": (torch.zeros(2, 2, 8, device=device), {}),
            "int": (torch.zeros(2, 8, dtype=torch.int32, device=device), {}),
            "block_size=3": (x, {"block_size": 3}), "block_size=2048": (x, {"block_size": 2048})}[bad]
    with pytest.raises(ValueError):
        day.online_softmax(args[0], **args[1])


# ---- blocked_attention -----------------------------------------------------------------------
def attention64(q, k, v):
    """Causal GQA attention in float64, the whole T x S score matrix at once: the oracle."""
    T, H, hd = q.shape
    S, KV, _ = k.shape
    qf = q.double().transpose(0, 1)
    kf = k.double().transpose(0, 1).repeat_interleave(H // KV, 0)
    vf = v.double().transpose(0, 1).repeat_interleave(H // KV, 0)
    s = qf @ kf.transpose(1, 2) / math.sqrt(hd)
    s = s.masked_fill(torch.arange(S)[None, :] > torch.arange(S - T, S)[:, None], float("-inf"))
    return (torch.softmax(s, -1) @ vf).transpose(0, 1)


def qkv(T, S, H, KV, hd, dtype=torch.float32, seed=0, scale=1.0):
    return (randn(T, H, hd, dtype=dtype, seed=seed, scale=scale), randn(S, KV, hd, dtype=dtype, seed=seed + 1),
            randn(S, KV, hd, dtype=dtype, seed=seed + 2))


@pytest.mark.parametrize("H, KV, T, S", [(4, 2, 7, 7), (6, 2, 5, 13), (4, 4, 1, 9), (9, 3, 3, 10)],
                         ids=["GQA-4/2-T=S", "GQA-6/2-T<S", "MHA-T=1", "SmolLM2-9/3"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_blocked_attention_matches_float64(day, H, KV, T, S, reverse):
    """Chunks that divide S and chunks that do not, chunk 1, chunk > S; in reverse, early query rows
    meet fully masked chunks first (m = -inf so far: no NaN)."""
    q, k, v = qkv(T, S, H, KV, 8, seed=S)
    expected = attention64(q, k, v)
    for chunk in (1, 2, 3, 4, S, S + 5):
        out = day.blocked_attention(q, k, v, chunk=chunk, reverse=reverse)
        assert_close(out, expected, f"blocked_attention H={H} KV={KV} T={T} S={S} chunk={chunk} reverse={reverse}",
                     atol=1e-6, rtol=1e-5)


def test_blocked_attention_float16_and_large_scores(day):
    q, k, v = qkv(6, 11, 4, 2, 16, torch.float16, seed=3)
    out = day.blocked_attention(q, k, v, chunk=4)
    assert out.dtype == torch.float16 and out.shape == q.shape, "blocked_attention returns [T, H, hd] in q's dtype"
    assert_close(out, reference.attention(q, k, v), "blocked_attention float16", **tol(torch.float16, 2))
    q, k, v = qkv(5, 9, 2, 1, 8, seed=5, scale=300.0)           # scores in the hundreds: exp overflows
    assert_close(day.blocked_attention(q, k, v, chunk=2), attention64(q, k, v),
                 "blocked_attention with scores in the hundreds (subtract the running max)", atol=1e-5, rtol=1e-5)


def largest_allocation(fn):
    """(result, bytes of the largest single allocation any torch op made while fn ran)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert sizes, "the torch profiler recorded no allocation at all: cannot measure memory here"
    return result, max(sizes)


def test_blocked_attention_never_holds_a_t_by_s_matrix(day):
    """O(1) state per row: no allocation may be as big as the H x T x S scores (here 16x a chunk's)."""
    T = S = 64
    H, KV, hd, chunk = 2, 1, 4, 4
    q, k, v = qkv(T, S, H, KV, hd, seed=7)
    out, biggest = largest_allocation(lambda: day.blocked_attention(q, k, v, chunk=chunk))
    assert_close(out, attention64(q, k, v), "blocked_attention T=S=64 chunk=4", atol=1e-6, rtol=1e-5)
    scores = H * T * S * 4
    assert biggest < scores // 4, (f"blocked_attention allocated {biggest} bytes at once; the full H x T x S scores "
                                   f"are {scores}: keep only one chunk's scores ({H * T * chunk * 4} bytes)")


@pytest.mark.parametrize("bad", ["chunk=0", "H%KV", "T>S", "head-size"])
def test_blocked_attention_bad_inputs(day, bad):
    q, k, v = qkv(3, 5, 4, 2, 8)
    args = {"chunk=0": ((q, k, v), 0), "H%KV": ((randn(3, 3, 8), k, v), 4), "T>S": ((randn(6, 4, 8), k, v), 4),
            "head-size": ((q, randn(5, 2, 6), randn(5, 2, 6)), 4)}[bad]
    with pytest.raises(ValueError):
        day.blocked_attention(*args[0], chunk=args[1])


# ---- GPU only -------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.bench
def test_bench_against_day_04_and_torch(day, device, track):
    """A report, not a speed target: one read of x for (m, l) instead of two (day 04: max, then sum).
    Records ms per call of online_softmax, day 04's softmax (when finished on this track) and
    torch.softmax on rows long enough to leave the caches, to build/bench/day_24_online_softmax.json."""
    from shared.course import registry
    from shared.course.testing import cuda_time_ms, record_bench
    try:
        day04 = registry.day_module(4, track).softmax
    except Exception:
        day04 = None
    rows = []
    for r, c in ((4096, 4096), (64, 262144), (8, 4194304)):
        x = randn(r, c, device=device, seed=1, scale=3.0)
        assert_close(day.online_softmax(x, block_size=1024), torch.softmax(x, -1), f"online_softmax [{r}, {c}]",
                     **tol(torch.float32))
        row = {"rows": r, "cols": c, "online_ms": cuda_time_ms(lambda: day.online_softmax(x, block_size=1024), 20),
               "torch_ms": cuda_time_ms(lambda: torch.softmax(x, -1), 20)}
        try:
            row["day04_ms"] = cuda_time_ms(lambda: day04(x, block_size=1024), 20) if day04 else None
        except NotImplementedError:
            row["day04_ms"] = None
        row["GB/s_online_2R1W"] = 3 * x.numel() * 4 / row["online_ms"] / 1e6
        rows.append(row)
    record_bench("day_24_online_softmax", {"gpu": torch.cuda.get_device_name(), "rows": rows})
