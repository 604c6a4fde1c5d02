"""Day 25 checker: flash attention (tiles of K and V, online softmax, no T x S anything).
Run: pytest checkers/day_25

Compared with shared.reference.attention (the day-14 contract: causal mask aligned to the end,
GQA, any strides) on odd sizes and several tile shapes, with poisoned outputs; then the flash
claims themselves: no allocation or shared memory that grows with T x S, and the causal tiles
above the diagonal never loaded."""
import math

import pytest
import torch

from shared import reference
from shared.course import registry
from shared.course.testing import assert_close, check_kernel, cuda_time_ms, randn, record_bench, tol
from shared.runtime import gpu

DTYPES = [torch.float32, torch.float16]


def qkv(T, S, H, KV, hd, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    return (randn(T, H, hd, dtype=dtype, device=device, seed=seed, scale=scale),
            randn(S, KV, hd, dtype=dtype, device=device, seed=seed + 1),
            randn(S, KV, hd, dtype=dtype, device=device, seed=seed + 2))


@pytest.fixture
def poisoned(monkeypatch):
    """torch.empty hands out NaN-filled float tensors while the test runs: an output element the
    kernel never writes shows as NaN, not as whatever the allocator left there."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


@pytest.fixture(scope="module")
def tiles(sizes):
    """(block_q, block_k): small in the simulator (one OS thread per CUDA thread), the defaults on a GPU."""
    return sizes(tiny=dict(block_q=4, block_k=4), real={})


# (H, KV, T, S, hd): odd T = S, a chunk after cached tokens (T < S), one query, T not a multiple of
# the tile and GQA 9/3, GQA 32/8 (SmolLM2 and Llama-8B shapes on a GPU)
TINY = [(4, 2, 5, 5, 8), (6, 2, 3, 11, 8), (4, 4, 1, 9, 8), (9, 3, 10, 13, 8), (8, 2, 6, 9, 16)]
REAL = [(9, 3, 1000, 1000, 64), (9, 3, 100, 1100, 64), (9, 3, 1, 2048, 64), (9, 3, 777, 777, 64),
        (32, 8, 517, 600, 128)]
IDS = ["T=S-odd", "T<S-chunk", "T=1", "GQA-9/3-T-not-tile", "GQA-32/8"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(TINY)), ids=IDS)
def test_matches_reference(day, sizes, device, tiles, poisoned, dtype, case):
    H, KV, T, S, hd = sizes(tiny=TINY, real=REAL)[case]
    q, k, v = qkv(T, S, H, KV, hd, dtype, device, seed=case)
    out = check_kernel(lambda: day.attention(q, k, v, **tiles), reference.attention(q, k, v),
                       f"attention H={H} KV={KV} T={T} S={S} hd={hd} {dtype} {tiles}", **tol(dtype, 2))
    assert out.dtype == q.dtype, f"attention returned {out.dtype} for {q.dtype} inputs: use q's dtype"


@pytest.mark.parametrize("block_q, block_k", [(1, 1), (2, 7), (8, 2), (16, 16), (3, 5)])
def test_tile_shapes(day, sizes, device, poisoned, block_q, block_k):
    """Tiles smaller and larger than T, not powers of two, Q and K tiles of different sizes: the causal
    diagonal falls at a different place inside a tile for every row."""
    H, KV, T, S, hd = sizes(tiny=(4, 2, 9, 12, 8), real=(9, 3, 333, 1000, 64))
    scale = sizes(tiny=1, real=4)
    q, k, v = qkv(T, S, H, KV, hd, device=device, seed=block_q * 10 + block_k)
    check_kernel(lambda: day.attention(q, k, v, block_q=block_q * scale, block_k=block_k * scale),
                 reference.attention(q, k, v), f"attention T={T} S={S} block_q={block_q * scale} "
                 f"block_k={block_k * scale}", **tol(torch.float32, 2))


def test_the_max_grows_from_tile_to_tile(day, sizes, device, tiles, poisoned):
    """Scores that increase with the key position: every new K tile brings a larger max, so the
    accumulator (and the sum) must be rescaled by exp(m_old - m_new) at every tile."""
    H, KV, T, S, hd = sizes(tiny=(2, 1, 6, 14, 8), real=(9, 3, 300, 1000, 64))
    q = torch.ones(T, H, hd, device=device)
    k = torch.linspace(-3, 3, S, device=device)[:, None, None].expand(S, KV, hd).contiguous()
    v = randn(S, KV, hd, device=device, seed=4)
    check_kernel(lambda: day.attention(q, k, v, **tiles), reference.attention(q, k, v),
                 "attention whose max grows at every K tile -- rescale acc and l", **tol(torch.float32, 2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_scores(day, device, tiles, dtype):
    """Scores in the hundreds: exp overflows unless it is taken relative to the running max."""
    q, k, v = qkv(7, 10, 2, 1, 8, dtype, device, seed=5, scale=60.0)
    check_kernel(lambda: day.attention(q, k, v, **tiles), reference.attention(q, k, v),
                 f"attention with large scores {dtype}", **tol(dtype, 4))


def test_kv_cache_views(day, device, tiles):
    """The engine passes k, v as views of its cache, kc[:, :end].transpose(0, 1): not contiguous."""
    KV, S, hd, H, T = 2, 11, 8, 4, 3
    k_cache, v_cache = randn(KV, 16, hd, device=device, seed=5), randn(KV, 16, hd, device=device, seed=6)
    k, v = k_cache[:, :S].transpose(0, 1), v_cache[:, :S].transpose(0, 1)
    q = randn(T, H, hd, device=device, seed=7)
    check_kernel(lambda: day.attention(q, k, v, **tiles), reference.attention(q, k.contiguous(), v.contiguous()),
                 "attention over strided KV-cache views (a chunk after cached tokens)", **tol(torch.float32, 2))


def test_returns_new_tensor_and_leaves_inputs_alone(day, device, tiles):
    q, k, v = qkv(5, 6, 4, 2, 8, torch.float16, device)
    before = [t.clone() for t in (q, k, v)]
    out = day.attention(q, k, v, **tiles)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device, \
        "attention must return [T, H, hd] in q's dtype on q's device"
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), before)), "attention must not modify q, k, v"


# ---- the flash claims -----------------------------------------------------------------------
def _largest_allocation(fn):
    """(result, bytes of the largest single torch allocation made while fn ran) on the CPU (sim tier)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert sizes, "the torch profiler recorded no allocation at all (not even the output): cannot measure memory"
    return result, max(sizes)


def test_no_t_by_s_buffer(day, sizes, device):
    """Extra memory is O(T * H * hd) (the output), never a T x S matrix of scores or probabilities."""
    H, KV, T, S, hd = sizes(tiny=(2, 1, 48, 48, 4), real=(9, 3, 4096, 4096, 64))
    q, k, v = qkv(T, S, H, KV, hd, device=device, seed=8)
    run = (lambda: day.attention(q, k, v, block_q=8, block_k=8)) if gpu.SIM else (lambda: day.attention(q, k, v))
    scores = H * T * S * 4
    output = T * H * hd * 4
    if gpu.SIM:
        out, biggest = _largest_allocation(run)
    else:
        run()                                        # compile first
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = run()
        torch.cuda.synchronize()
        biggest = torch.cuda.max_memory_allocated() - base
    assert_close(out, reference.attention(q, k, v), f"attention T={T} S={S}", **tol(torch.float32, 2))
    assert biggest <= 4 * output and biggest < scores, (
        f"attention T={T} S={S} H={H} allocated {biggest} bytes at once; the output is {output} and the H x T x S "
        f"scores would be {scores}: flash attention keeps only tiles and per-row (m, l, acc)")


def test_shared_memory_does_not_grow_with_the_sequence(day, device, monkeypatch):
    """A block's shared memory holds tiles, not a row of scores (day 14's S floats): it is the same
    for S = 8 and S = 40, T = 2 and T = 40."""
    asked = []
    launch = gpu.launch

    def recording(kernel, grid, block, *args, shared_bytes=0):
        asked.append(shared_bytes)
        return launch(kernel, grid, block, *args, shared_bytes=shared_bytes)

    monkeypatch.setattr(gpu, "launch", recording)
    for T, S in ((2, 8), (2, 40), (40, 40)):
        q, k, v = qkv(T, S, 2, 1, 8, device=device, seed=S)
        assert_close(day.attention(q, k, v, block_q=4, block_k=4), reference.attention(q, k, v),
                     f"attention T={T} S={S}", **tol(torch.float32, 2))
    assert asked, "attention launched nothing through shared.runtime.gpu.launch"
    assert len(set(asked)) == 1, (f"dynamic shared memory per launch changed with T and S: {asked} bytes for "
                                  "(T, S) = (2, 8), (2, 40), (40, 40): keep tiles in shared memory, not a score row")


def test_tiles_above_the_diagonal_are_never_loaded(day, device, monkeypatch):
    """Sim tier: count every element read of k. Each (query tile, head) block loads the K tiles up to
    its last row's diagonal, once each, into shared memory; a tile entirely above the diagonal is
    skipped, and no thread reads K from global memory on its own (that would be block_q times more)."""
    if not gpu.SIM:
        pytest.skip("counts reads through the simulator's arrays")
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    H, KV, T, S, hd, bq, bk = 2, 1, 16, 18, 4, 4, 4
    q, k, v = qkv(T, S, H, KV, hd, seed=9)
    reads = []

    class Counting(FakeCUDAArray):
        def __getitem__(self, idx):
            reads.append(idx)
            return super().__getitem__(idx)

    sim_arg = gpu._sim_arg
    monkeypatch.setattr(gpu, "_sim_arg", lambda a: Counting(a.detach().numpy())
                        if isinstance(a, torch.Tensor) and a.data_ptr() == k.data_ptr() else sim_arg(a))
    out = day.attention(q, k, v, block_q=bq, block_k=bk)
    monkeypatch.undo()
    assert_close(out, reference.attention(q, k, v), "attention", **tol(torch.float32, 2))
    assert reads, "k was never read: pass k itself to the kernel (no copy)"
    # query tile x ends at row min((x + 1) * bq, T) - 1, position S - T + that row: it needs those keys, rounded
    # up to whole tiles; with no skipping every block would read all S keys
    needed = sum(min(S, -(-(S - T + min((x + 1) * bq, T)) // bk) * bk) for x in range(-(-T // bq))) * hd * H
    everything = -(-T // bq) * S * hd * H
    assert len(reads) <= needed, (f"k was read {len(reads)} times; loading each needed K tile once per block is "
                                  f"{needed} reads (and every tile for every block {everything}): skip the tiles "
                                  "above the diagonal, and read K into shared memory once per block")


@pytest.mark.parametrize("shapes", [((2, 3, 8), (4, 2, 8), (4, 2, 8)), ((5, 4, 8), (3, 2, 8), (3, 2, 8)),
                                    ((2, 4, 8), (4, 2, 6), (4, 2, 6)), ((2, 4, 8), (4, 2, 8), (5, 2, 8)),
                                    ((2, 32), (4, 2, 16), (4, 2, 16)), ((2, 4, 512), (4, 2, 512), (4, 2, 512))],
                         ids=["H%KV", "T>S", "head-size", "k-v-length", "2-D-q", "head_dim-512"])
def test_bad_shapes_raise_value_error(day, device, shapes):
    q, k, v = (torch.zeros(s, device=device) for s in shapes)
    with pytest.raises(ValueError):
        day.attention(q, k, v)


def test_mismatched_dtypes_and_bad_tiles_raise_value_error(day, device):
    q, k, v = qkv(2, 4, 4, 2, 8, device=device)
    for args, kw, what in [((q.half(), k, v), {}, "float16 q with float32 k, v"),
                           ((q.double(), k.double(), v.double()), {}, "float64"),
                           ((q, k, v), {"block_q": 0}, "block_q=0"), ((q, k, v), {"block_k": 0}, "block_k=0"),
                           ((q, k, v), {"block_k": 100000}, "block_k=100000")]:
        with pytest.raises(ValueError):
            day.attention(*args, **kw)
            pytest.fail(f"attention accepted {what}; raise a one-line ValueError before any launch")


# ---- GPU only -------------------------------------------------------------------------------
@pytest.mark.gpu
def test_long_prefill_runs_where_a_score_row_would_not_fit(day, device):
    """T = S = 16384 at SmolLM2's shapes: day 14 would need 4 * 16384 bytes of shared memory per block for a
    row of scores (> 48 KiB) and the H x T x S scores are 9.7 GB. Rows checked: the first and last 64."""
    H, KV, T, hd = 9, 3, 16384, 64
    assert 4 * T > 48 * 1024
    q, k, v = qkv(T, T, H, KV, hd, torch.float16, device, seed=10)
    out = day.attention(q, k, v)
    assert_close(out[:64], reference.attention(q[:64], k[:64], v[:64]), "attention rows 0..63 of T=16384",
                 **tol(torch.float16, 2))
    assert_close(out[-64:], reference.attention(q[-64:], k, v), "attention rows T-64..T-1 of T=16384",
                 **tol(torch.float16, 2))


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_against_day_14_and_torch(day, device, track):
    """A report, not a speed target: this simple kernel (one thread per query row) is not fast yet --
    day 26 is. Records ms for day 25, day 14 (when it is finished on this track and the row fits),
    the reference and torch's fused scaled_dot_product_attention, to build/bench/day_25_flash_attention.json."""
    import torch.nn.functional as F
    try:
        day14 = registry.day_module(14, track).attention
    except Exception:
        day14 = None
    rows = []
    for T in (512, 2048, 8192):
        q, k, v = qkv(T, T, 9, 3, 64, torch.float16, device, seed=T)
        out = day.attention(q, k, v)
        if T <= 2048:                                 # the reference's H x T x S scores stay small
            assert_close(out, reference.attention(q, k, v), f"attention T={T} fp16 (the timed call)",
                         **tol(torch.float16, 2))
        qh, kh, vh = (t.transpose(0, 1)[None].contiguous()
                      for t in (q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)))
        row = {"T": T, "ours_ms": cuda_time_ms(lambda: day.attention(q, k, v), 10),
               "sdpa_ms": cuda_time_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True), 10)}
        if T <= 2048:
            row["reference_ms"] = cuda_time_ms(lambda: reference.attention(q, k, v), 10)
        try:
            row["day14_ms"] = cuda_time_ms(lambda: day14(q, k, v), 10) if day14 else None
        except (ValueError, NotImplementedError) as e:
            row["day14_ms"] = f"n/a: {str(e).splitlines()[0][:80]}"
        rows.append(row)
    record_bench("day_25_flash_attention", {"H": 9, "KV": 3, "hd": 64, "dtype": "fp16",
                                            "gpu": torch.cuda.get_device_name(), "rows": rows})
