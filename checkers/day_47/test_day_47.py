"""Day 47 checker: linear(x, w) for a Q4Weight -- GGUF Q4_1 blocks (4-bit nibbles, fp16 d and m
per block of 32) unpacked in the kernel. Run: pytest checkers/day_47

The oracle is `shared.q4.dequantize(w)` (d * nibble + m in float32) times x, summed in float64.
Your kernel sums in float32 in its own order, and may factor the block's minimum out
(m * sum x): the bound is gamma_n * sum |x| (|d| nibble + |m|) with gamma_n = n u / (1 - n u),
u = 2^-24, n = 2 K + 8 (the sums of products and of x, the multiplies by d and m, the oracle's
rounding of d * nibble + m, spares). Rounded once to x's dtype, the output must lie between the
oracle's y - e and y + e rounded the same way. Weights are chosen so every mistake the lesson
warns about (nibble order, d and m, which block, signed nibbles) moves outputs far past it.
"""
import math

import pytest
import torch

from shared import reference as ref
from shared.course.testing import assert_deterministic, cold_copies, graph_ms, no_host_reads, poison_, randn, record_bench
from shared.q4 import BLOCK, Q4Weight, dequantize, from_gguf_blocks, nibbles, pack, quantize_q4, to_gguf_blocks

DAY = 47
U = 2.0 ** -24


# ---- inputs --------------------------------------------------------------------------------------
def random_q4(rows, cols, group_size=BLOCK, seed=0, device="cpu", dtype=torch.float16):
    """Random nibbles 0..15 and d, m that differ block to block (d > 0 and < 0, m of both signs)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (rows, cols), generator=g)
    groups = cols // group_size
    d = ((torch.rand(rows, groups, generator=g) + 0.2) * torch.where(torch.rand(rows, groups, generator=g) < 0.2,
                                                                    -1.0, 1.0) * 0.05).half()
    m = (torch.randn(rows, groups, generator=g) * 0.3).half()
    return Q4Weight(pack(q).to(device), d.to(device), m.to(device), group_size, dtype)


def bracket(x, w):
    xd = x.double().cpu()
    wd = dequantize(Q4Weight(w.qs.cpu(), w.d.cpu(), w.m.cpu(), w.group_size, w.dtype)).double()
    q = nibbles(w.qs.cpu()).double().view(w.shape[0], -1, w.group_size)
    mag = (q * w.d.cpu().double().abs().unsqueeze(-1) + w.m.cpu().double().abs().unsqueeze(-1)).view(w.shape)
    y = xd @ wd.T
    n = 2 * xd.shape[1] + 8
    e = n * U / (1 - n * U) * (xd.abs() @ mag.T)
    return (y - e).to(x.dtype).double(), (y + e).to(x.dtype).double(), y


def verify(out, x, w, what):
    assert isinstance(out, torch.Tensor), f"{what}: linear must return a tensor, got {type(out).__name__}"
    T, N = x.shape[0], w.shape[0]
    assert tuple(out.shape) == (T, N), f"{what}: output shape {tuple(out.shape)}, expected {(T, N)}"
    assert out.dtype == x.dtype, f"{what}: linear must return x's dtype {x.dtype}, got {out.dtype}"
    lo, hi, y = bracket(x, w)
    got = out.double().cpu()
    bad = ~((got >= lo) & (got <= hi))
    if bad.any():
        t, n = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.numel()} outputs are off; first y[{t}, {n}] = {got[t, n]:.8g}, "
            f"dequantize(w) @ x gives {y[t, n]:.8g} (allowed: {lo[t, n]:.8g} .. {hi[t, n]:.8g}) -- weight 32 b + j "
            "is the LOW nibble of byte j of block b (j < 16), weight 32 b + j + 16 its HIGH nibble, unsigned 0..15, "
            "value d * nibble + m with the d and m of that block's group")
    return out


def check(day, x, w, what, **kw):
    return verify(day.linear(x, w, **kw), x, w, what)


# ---- the GEMV -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("K,group_size,dtype,block_size,wpr", [
    (32, 32, torch.float16, 32, 1), (96, 32, torch.float32, 64, 2), (160, 32, torch.float16, 32, 1),
    (192, 64, torch.float16, 128, None), (96, 96, torch.float32, 32, None)])
def test_gemv_random(day, sizes, device, K, group_size, dtype, block_size, wpr):
    """T = 1, N odd; rows of 1, 3 and 5 blocks (lanes with no block, a lane with two), groups of
    32 (GGUF), 64 and the whole row; one or two warps per row; fp16 and fp32 x."""
    N = sizes(tiny=5, real=1001)
    K = sizes(tiny=K, real=K * 32)
    w = random_q4(N, K, group_size, seed=K + group_size, device=device)
    x = randn(1, K, seed=K, dtype=dtype, device=device)
    check(day, x, w, f"linear T=1 K={K} N={N} groups of {group_size} {dtype} block_size={block_size} "
                     f"warps_per_row={wpr}", block_size=block_size, warps_per_row=wpr)


def test_gemv_lanes_take_several_blocks(day, device):
    """K = 32 * 70 on one warp: each lane takes two or three blocks, each with its own d and m."""
    w = random_q4(3, 32 * 70, seed=70, device=device)
    x = randn(1, 32 * 70, seed=71, dtype=torch.float16, device=device)
    check(day, x, w, "linear T=1 K=2240 N=3 block_size=32", block_size=32, warps_per_row=1)


def test_nibble_order_by_hand(day, device):
    """One block, d = 1, m = 0: byte j = j | (15 - j) << 4, so weights 0..15 are 0..15 and weights
    16..31 are 15..0. x picks single weights: y = the weight itself (no rounding anywhere)."""
    j = torch.arange(16, dtype=torch.int32)
    qs = (j | ((15 - j) << 4)).to(torch.uint8).view(1, 16)
    w = Q4Weight(qs.to(device), torch.ones(1, 1, dtype=torch.float16, device=device),
                 torch.zeros(1, 1, dtype=torch.float16, device=device))
    want = list(range(16)) + list(range(15, -1, -1))
    for k in (0, 3, 15, 16, 20, 31):
        x = torch.zeros(1, 32, dtype=torch.float16)
        x[0, k] = 1.0
        got = float(day.linear(x.to(device), w)[0, 0])
        assert got == want[k], (f"weight {k} of a block whose byte j holds j (low nibble) and 15 - j (high): "
                                f"got {got}, expected {want[k]} -- weight j < 16 is the low nibble of byte j, "
                                "weight j + 16 the high nibble of byte j")


def test_d_and_m_by_hand(day, device):
    """Two blocks with all nibbles 15 and 0 alternating, d and m of different sizes per block: x = 1
    everywhere gives sum over blocks of d * sum(nibbles) + 32 m -- m counts once per weight."""
    q = torch.tensor([[15, 0] * 32])
    d = torch.tensor([[0.5, -2.0]], dtype=torch.float16)
    m = torch.tensor([[3.0, 0.25]], dtype=torch.float16)
    w = Q4Weight(pack(q).to(device), d.to(device), m.to(device))
    x = torch.ones(1, 64, dtype=torch.float32, device=device)
    got = float(day.linear(x, w)[0, 0])
    want = 0.5 * 15 * 16 + 32 * 3.0 + (-2.0) * 15 * 16 + 32 * 0.25
    assert got == want, f"d = [0.5, -2], m = [3, 0.25], nibbles 15, 0, ...: got {got}, expected {want}"


def test_default_launch_and_fp32(day, device):
    w = random_q4(7, 64, seed=3, device=device, dtype=torch.float32)
    check(day, randn(1, 64, seed=4, device=device), w, "linear(x, w) T=1 K=64 N=7 fp32, default launch")


@pytest.mark.parametrize("T", [2, 5])
def test_several_tokens(day, device, T):
    """T > 1 (prefill, verify): the same values, whatever path (the solution dequantizes per call)."""
    w = random_q4(5, 64, seed=T, device=device)
    x = randn(T, 64, seed=T + 1, dtype=torch.float16, device=device)
    out = day.linear(x, w)
    lo, hi, y = bracket(x, w)
    # the previous linear may sum the fp16-rounded weights: allow one fp16 rounding of each weight
    mag = (x.double().cpu().abs() @ dequantize(Q4Weight(w.qs.cpu(), w.d.cpu(), w.m.cpu())).double().abs().T)
    e = 2.0 ** -11 * mag + 2 * (hi - lo).abs()
    assert tuple(out.shape) == (T, 5) and out.dtype == x.dtype
    err = (out.double().cpu() - y).abs()
    assert bool((err <= e + 2.0 ** -10 * y.abs()).all()), f"linear T={T}: off by {float(err.max()):.4g}"


def test_writes_only_its_outputs(day, device, monkeypatch):
    """A poisoned output buffer must be fully written (rows past N not launched into it)."""
    real_empty = torch.empty

    def poisoned(*a, **k):
        return poison_(real_empty(*a, **k))
    monkeypatch.setattr(torch, "empty", poisoned)
    w = random_q4(9, 64, seed=9, device=device)
    check(day, randn(1, 64, seed=9, dtype=torch.float16, device=device), w, "linear T=1 N=9 (poisoned output)",
          block_size=64, warps_per_row=1)


def test_two_launches_agree(day, device):
    w = random_q4(5, 128, seed=5, device=device)
    x = randn(1, 128, seed=6, dtype=torch.float16, device=device)
    assert_deterministic(day.linear(x, w, block_size=64, warps_per_row=2),
                         day.linear(x, w, block_size=64, warps_per_row=2), "linear T=1 (two launches)")


def test_misaligned_x(day, device):
    """x a view one element into a bigger tensor (not 16-byte aligned): the element-wise loads."""
    w = random_q4(3, 64, seed=11, device=device)
    big = randn(1, 65, seed=12, dtype=torch.float16, device=device)
    check(day, big[:, 1:], w, "linear T=1 x = big[:, 1:] (misaligned)", block_size=32)


def test_plain_tensors_go_to_the_previous_linear(day, device):
    wt = randn(5, 64, seed=1, dtype=torch.float16, device=device)
    x = randn(1, 64, seed=2, dtype=torch.float16, device=device)
    out = day.linear(x, wt)
    torch.testing.assert_close(out.float().cpu(), (x.float() @ wt.float().T).cpu(), atol=2e-2, rtol=2e-2)


def test_no_host_reads(day, device):
    w = random_q4(3, 64, seed=13, device=device)
    x = randn(1, 64, seed=14, dtype=torch.float16, device=device)
    with no_host_reads():
        out = day.linear(x, w)
    verify(out, x, w, "linear T=1 under no_host_reads")


def test_inputs_untouched(day, device):
    w = random_q4(3, 64, seed=15, device=device)
    x = randn(1, 64, seed=16, dtype=torch.float16, device=device)
    before = [t.clone() for t in (x, w.qs, w.d, w.m)]
    day.linear(x, w)
    for a, b in zip(before, (x, w.qs, w.d, w.m)):
        assert torch.equal(a, b), "linear must not write its inputs"


BAD = {
    "x has another in": lambda dev: (randn(1, 96, device=dev, dtype=torch.float16), random_q4(3, 64, device=dev), {}),
    "x is int": lambda dev: (torch.ones(1, 64, dtype=torch.int32, device=dev), random_q4(3, 64, device=dev), {}),
    "block_size 48": lambda dev: (randn(1, 64, device=dev, dtype=torch.float16), random_q4(3, 64, device=dev),
                                  {"block_size": 48}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_one_line_value_errors(day, device, case):
    x, w, kw = BAD[case](device)
    with pytest.raises(ValueError) as e:
        day.linear(x, w, **kw)
    assert "\n" not in str(e.value), f"{case}: one line, got {str(e.value)!r}"


# ---- the given parts: Q4Weight, the GGUF bytes, the w4a16 quantizer (no day code) ---------------------
def test_gguf_blocks_from_hand_built_bytes():
    """Two rows of two blocks built byte by byte as a GGUF stores them (fp16 d, fp16 m, 16 bytes):
    the reader keeps d, m and the nibbles, and dequantize gives d * nibble + m at the right columns."""
    import struct
    rows = []
    want = torch.zeros(2, 64)
    for r in range(2):
        row = b""
        for b in range(2):
            d, m = 0.5 * (r + 1) + b, -1.0 - r + 0.25 * b
            q = [(3 * j + r + b) % 16 for j in range(32)]
            row += struct.pack("<ee", d, m) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
            want[r, 32 * b:32 * b + 32] = torch.tensor([d * v + m for v in q])
        rows.append(list(row))
    raw = torch.tensor(rows, dtype=torch.uint8)
    w = from_gguf_blocks(raw)
    assert w.shape == (2, 64) and w.group_size == 32 and w.bytes_per_weight == 20 / 32
    assert torch.equal(dequantize(w), want), "the GGUF reader or dequantize misreads the blocks"
    assert torch.equal(to_gguf_blocks(w), raw)
    with pytest.raises(ValueError, match="whole blocks"):
        from_gguf_blocks(raw[:, :30])                   # a last partial block


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError):
        Q4Weight(torch.zeros(2, 24, dtype=torch.uint8), torch.zeros(2, 1, dtype=torch.float16),
                 torch.zeros(2, 1, dtype=torch.float16), 48)
    with pytest.raises(ValueError):
        quantize_q4(torch.randn(3, 80), 32)             # 32 does not divide 80
    with pytest.raises(ValueError):
        quantize_q4(torch.randn(3, 96), 48)             # not a multiple of 32


@pytest.mark.parametrize("dtype,group_size", [(torch.float16, 32), (torch.float32, 64), (torch.float16, 96)])
def test_quantizer_round_trip_within_half_a_step(dtype, group_size):
    g = torch.Generator().manual_seed(group_size)
    w = (torch.randn(7, 192, generator=g) * torch.exp(torch.randn(7, 1, generator=g))).to(dtype)
    w[0, :group_size] = 0.75                             # a constant group: d = 0
    q = quantize_q4(w, group_size)
    err = (dequantize(q) - w.float()).abs().view(7, -1, group_size)
    half = q.d.float().abs().unsqueeze(-1) / 2
    assert bool((err <= half * (1 + 1e-6) + 1e-30).all()), f"round trip off by {float((err - half).max())} past d/2"
    assert int(nibbles(q.qs).max()) <= 15


def test_the_cpu_reference_takes_a_q4weight():
    w = random_q4(3, 64, seed=21)
    x = randn(2, 64, seed=22, dtype=torch.float16)
    verify(ref.linear(x, w), x, w, "shared.reference.linear")


# ---- the fused names, unfused around linear ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gated", "rope"])   # rope: its v rows are the plain product
def test_norm_linear_and_linear_add_around_linear(day, device, kind):
    """Day 54's decode step calls norm_linear / linear_add: for a Q4Weight they are the track's
    norm, this day's linear and the epilogue; compared with the reference composition."""
    from shared.reference import fusion
    D, N = 64, 64 if kind == "rope" else 32
    h = randn(1, D, seed=1, dtype=torch.float32, device=device)
    nw = randn(D, seed=2, dtype=torch.float32, device=device).abs() + 0.5
    w = random_q4(N, D, seed=3, device=device, dtype=torch.float32)
    rope = None
    if kind == "rope":
        rope = (torch.tensor([5], device=device), (1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)).to(device), 2)
    got = day.norm_linear(h, nw, 1e-5, w, gated=kind == "gated", rope=rope)
    want = fusion.norm_linear(h.cpu(), nw.cpu(), 1e-5, Q4Weight(w.qs.cpu(), w.d.cpu(), w.m.cpu(), dtype=torch.float32),
                              gated=kind == "gated", rope=None if rope is None else tuple(
                                  t.cpu() if isinstance(t, torch.Tensor) else t for t in rope))
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
    x = randn(1, D, seed=4, dtype=torch.float32, device=device)
    acc = randn(1, N, seed=5, dtype=torch.float32, device=device)
    want = acc.cpu() + ref.linear(x.cpu(), Q4Weight(w.qs.cpu(), w.d.cpu(), w.m.cpu(), dtype=torch.float32))
    day.linear_add(x, w, acc)
    torch.testing.assert_close(acc.cpu(), want, atol=1e-4, rtol=1e-4)


# ---- GPU only ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("N,K,block_size,wpr", [(2048, 2048, 128, None), (8192, 2048, 256, 4),
                                                (2048, 8192, 1024, 32), (577, 576, 64, None)])
def test_real_shapes_16_byte_loads(day, device, N, K, block_size, wpr):
    w = random_q4(N, K, seed=N + K, device=device)
    x = randn(1, K, seed=1, dtype=torch.float16, device=device)
    check(day, x, w, f"linear T=1 N={N} K={K}", block_size=block_size, warps_per_row=wpr)


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_w4a16_vs_fp16_gemv(day, device):
    """Same run: the 4-bit GEMV vs the fp16 one (the previous linear) on the 1B shapes, each
    graph-replayed (the GPU's time, not Python's launch cost) with its weights cold in L2 (as in a
    decode step, every layer reads its own); the issue's goal is 2.5x on the decode step,
    asserted here at a conservative floor."""
    results = {}
    for N, K in [(2048, 2048), (8192, 2048), (128256, 2048)]:
        wt = randn(N, K, seed=1, dtype=torch.float16, device=device)
        w = quantize_q4(wt)
        x = randn(1, K, seed=2, dtype=torch.float16, device=device)
        fp16 = cold_copies(lambda: wt.clone(), N * K * 2)
        q4 = cold_copies(lambda: Q4Weight(w.qs.clone(), w.d.clone(), w.m.clone(), w.group_size, w.dtype), w.nbytes)
        t16 = graph_ms([lambda c=c: day.linear(x, c) for c in fp16])
        t4 = graph_ms([lambda c=c: day.linear(x, c) for c in q4])
        results[f"{N}x{K}"] = {"fp16_ms": t16, "w4a16_ms": t4, "speedup": t16 / t4,
                               "GBps_w4": w.nbytes / t4 / 1e6}
        del fp16, q4
    record_bench("day_47_w4a16_gemv", {"shapes": results, "goal": 2.5, "floor": 1.3,
                                       "goal_met": all(r["speedup"] >= 2.5 for r in results.values())})
    for s, r in results.items():
        assert r["speedup"] >= 1.3, f"{s}: the 4-bit GEMV is only {r['speedup']:.2f}x the fp16 one"


# ---- GPU only: the engine ------------------------------------------------------------------------------
def q4_engine(day, path, track, mode, **kw):
    """The engine on your kernels: the track's fp16 engine with its matrices made Q4Weights at load
    (--quant w4a16, or gguf: the folder's GGUF blocks) and your linear / norm_linear / linear_add
    in its ops (day 54's fused forward, the track's if it is day 54's, else the reference's)."""
    from shared.engine import Engine, q4_model
    from shared.engine.quant import QuantOptions
    e = Engine(str(path), track=track, dtype="fp16", **kw)
    if mode == "gguf":
        q4_model.load_gguf(e.weights, q4_model.check_gguf(path))
    else:
        q4_model.quantize_model(e.weights, 32, head=True)
    e.quant = QuantOptions(mode, None, True)
    e.ops._cache.update(linear=day.linear, norm_linear=day.norm_linear, linear_add=day.linear_add)
    if (e.ops.source("forward").day or 0) < 54:
        e.ops._cache["forward"] = ref.forward_fused
    return e


def needs_gguf(path):
    from shared.engine.q4_model import gguf_file
    if gguf_file(path) is None:
        pytest.skip(f"{path} has no .gguf: `tinyinfer model prepare --force` keeps it (day 47)")


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a",
           "The three laws of thermodynamics are", "Water boils at", "In 1863, Abraham Lincoln",
           "The quick brown fox", "To make a cup of tea, first"]


@pytest.mark.gpu
@pytest.mark.model
def test_greedy_tokens_gguf_vs_the_prepared_fp16_folder(day, track, smollm2):
    """SmolLM2-135M from its GGUF's Q4_1 blocks vs the prepared folder (the same GGUF dequantized,
    stored as bf16, loaded as fp16), 8 prompts x 32 greedy tokens. The weights are the same numbers
    up to the folder's bf16 rounding of d * nibble + m (8 bits of mantissa), and the sums run in
    another order: identical tokens are the goal, a late divergence is explained by those two
    roundings (recorded for the lesson). It fails only if the first token differs on most prompts."""
    from shared.engine import Engine
    needs_gguf(smollm2)
    fp16 = Engine(str(smollm2), track=track, dtype="fp16")
    base = {p: list(fp16.generate_ids(fp16.prompt_ids(p), max_new_tokens=32, ignore_eos=True)) for p in PROMPTS}
    del fp16
    result = {"model": "SmolLM2-135M-Instruct", "gpu": torch.cuda.get_device_name(), "tokens": 32, "prompts": PROMPTS}
    for mode in ("gguf", "w4a16"):
        q = q4_engine(day, smollm2, track, mode)
        first = [next((i for i, (a, b) in enumerate(zip(base[p], q.generate_ids(q.prompt_ids(p), max_new_tokens=32,
                                                                               ignore_eos=True))) if a != b), 32)
                 for p in PROMPTS]
        result[f"{mode}_first_divergence"] = first
        result[f"{mode}_prompts_identical"] = sum(1 for f in first if f == 32)
        del q
    record_bench("day_47_greedy_agreement_smollm2", result)
    assert sum(1 for f in result["gguf_first_divergence"] if f > 0) >= len(PROMPTS) // 2, \
        f"the GGUF engine's first token differs from the fp16 folder's on most prompts: {result}"


@pytest.mark.gpu
def test_engine_graphs_equal_eager_with_4bit_weights(day, track, tiny_model):
    graphed = q4_engine(day, tiny_model, track, "w4a16")
    eager = q4_engine(day, tiny_model, track, "w4a16", graphs=False)
    assert graphed.use_graphs, "the track has no CUDA graphs: nothing to compare"
    ids = graphed.prompt_ids("graph == eager")
    assert list(graphed.generate_ids(ids, max_new_tokens=24)) == list(eager.generate_ids(ids, max_new_tokens=24))


MIN_SPEEDUP = 1.3      # the floor asserted on the 1B shape (w4a16 / fp16 decode tok/s, graphs)
GOAL_SPEEDUP = 2.5     # issue 17's goal, recorded


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.parametrize("model", ["llama-1b", pytest.param("smollm2", marks=pytest.mark.model)])
def test_bench_decode_4bit_vs_fp16(day, track, request, model):
    """One run, one GPU: decode tok/s of the fp16 engine and of the 4-bit engine on your kernels
    (w4a16; and gguf on SmolLM2, whose folder keeps its GGUF), graphs on, prompt 512 + 64 new tokens.
    On the Llama-3.2-1B shape w4a16 must be at least MIN_SPEEDUP faster (GOAL_SPEEDUP recorded)."""
    from shared import models
    from shared.engine import Engine
    path = request.getfixturevalue("smollm2") if model == "smollm2" else models.resolve("llama-1b")
    fp16 = Engine(str(path), track=track, dtype="fp16")
    assert fp16.use_graphs, "the bench compares graph-replayed decode: the track needs day 23"
    result = {"model": model, "gpu": torch.cuda.get_device_name(), "track": track, "prompt": 512, "new_tokens": 64,
              "fp16_tok_s": decode_rate(fp16)}
    del fp16
    torch.cuda.empty_cache()
    from shared.engine.q4_model import gguf_file
    for mode in ("w4a16", "gguf") if model == "smollm2" and gguf_file(path) else ("w4a16",):
        q = q4_engine(day, path, track, mode)
        result[f"{mode}_tok_s"] = decode_rate(q)
        result[f"{mode}_speedup"] = result[f"{mode}_tok_s"] / result["fp16_tok_s"]
        del q
        torch.cuda.empty_cache()
    result.update(floor=MIN_SPEEDUP, goal=GOAL_SPEEDUP, goal_met=result["w4a16_speedup"] >= GOAL_SPEEDUP)
    record_bench(f"day_47_4bit_vs_fp16_{model.replace('-', '_')}", result)
    assert result["w4a16_tok_s"] > 0 and math.isfinite(result["w4a16_tok_s"]), f"no 4-bit decode rate: {result}"
    if model == "llama-1b":
        assert result["w4a16_speedup"] >= MIN_SPEEDUP, (
            f"w4a16 decodes {result['w4a16_speedup']:.2f}x as fast as fp16 on the 1B shape (floor {MIN_SPEEDUP}, "
            f"goal {GOAL_SPEEDUP}) -- see the lesson's 'What to measure'")


def decode_rate(engine, prompt_tokens=512, new_tokens=64, reps=3) -> float:
    """Decode tok/s as the engine runs (graphs, the device-fed loop), best of reps after a warm-up."""
    from shared.reference.benchmark import synthetic_prompt
    ids = synthetic_prompt(engine.config.vocab_size, prompt_tokens)
    list(engine.generate_ids(ids, max_new_tokens=new_tokens, ignore_eos=True))
    best = 0.0
    for _ in range(reps):
        list(engine.generate_ids(ids, max_new_tokens=new_tokens, ignore_eos=True))
        best = max(best, engine.stats.decode_tok_s)
    return best
