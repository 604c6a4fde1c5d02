"""Day 41 checker: linear(x, w) for a QuantWeight -- int8 weights dequantized in the kernel.
Run: pytest checkers/day_41

The oracle is `shared.quant.dequantize(w)` (float32 weights) times x, summed in float64. Your
kernel sums K products in float32 in its own order, so it may differ from that by the classic
bound for a sum of n rounded terms, gamma_n * sum |x| |w| with gamma_n = n u / (1 - n u),
u = 2^-24, n = K + 4 (the K - 1 additions, the product x * (q - zero), the multiply by the scale,
the oracle's own rounding of (q - zero) * scale, one spare). Rounded once to x's dtype, the output
must lie between the oracle's y - e and y + e rounded the same way: nothing is tuned to a case,
and in fp16 any extra rounding on the way (a product, a partial sum) shows as a flipped last bit.
"""
import inspect
import math

import pytest
import torch

from shared import reference as ref
from shared.course import registry
from shared.course.testing import assert_deterministic, cold_copies, graph_ms, no_host_reads, poison_, randn, record_bench
from shared.quant import QuantWeight, dequantize

DAY = 41
SCHEMES = ["symmetric", "asymmetric"]
GRANULARITIES = ["tensor", "channel", "group"]
DTYPES = [torch.float32, torch.float16]
U = 2.0 ** -24                      # float32's unit roundoff
# Llama-3.2-1B weights as [out, in]: q/o, gate/up, lm_head (the bench), k/v and down (correctness)
BENCH_SHAPES = [(2048, 2048), (8192, 2048), (128256, 2048)]
MIN_SPEEDUP = {(2048, 2048): 1.0, (8192, 2048): 1.25, (128256, 2048): 1.25}   # fp16 GEMV time / int8 time


# ---- inputs --------------------------------------------------------------------------------------
def weight_like(rows, cols, seed=0):
    """Gaussian rows of different sizes, a few 8x outliers, rows shifted off 0 (so asymmetric zero
    points are not all -128 + 128 / 2): what a trained weight looks like to a quantizer."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.exp(0.5 * torch.randn(rows, 1, generator=g)) * cols ** -0.5
    idx = torch.randint(0, rows * cols, (max(1, rows * cols // 50),), generator=g)
    w.view(-1)[idx] *= 8.0
    return w + 0.5 * cols ** -0.5 * torch.rand(rows, 1, generator=g)


def quantized(rows, cols, scheme, granularity, group_size=32, seed=0, device="cpu"):
    """A QuantWeight from the reference quantizer (day 40's semantics), on `device`."""
    qw = ref.quantize_int8(weight_like(rows, cols, seed), scheme=scheme, granularity=granularity,
                           group_size=group_size)
    return to(qw, device)


def to(qw, device):
    return QuantWeight(qw.q.to(device), qw.scale.to(device), None if qw.zero is None else qw.zero.to(device),
                       qw.group_size, qw.scheme, qw.granularity, qw.dtype)


def hand_made(q, scale, zero, group_size, granularity):
    """A QuantWeight from its fields (any int8 values, zero points anywhere in int8)."""
    return QuantWeight(q, scale, zero, group_size, "symmetric" if zero is None else "asymmetric", granularity,
                       torch.float16)


def layout(granularity, K):
    """(K, group_size) for a granularity: groups of 32 need K a multiple of 32."""
    return (96, 32) if granularity == "group" else (K, K)


# ---- the oracle and the bound --------------------------------------------------------------------
def bracket(x, qw):
    """(lo, hi): the outputs allowed for x @ dequantize(qw).T summed in float32 in any order and
    rounded once to x's dtype (see the module docstring)."""
    xd, wd = x.double().cpu(), dequantize(qw).double().cpu()
    y = xd @ wd.T
    n = xd.shape[1] + 4
    e = n * U / (1 - n * U) * (xd.abs() @ wd.abs().T)
    return (y - e).to(x.dtype).double(), (y + e).to(x.dtype).double(), y


def verify(out, x, qw, what):
    """out must be x @ dequantize(qw).T within the bound, shape [T, out], in x's dtype."""
    assert isinstance(out, torch.Tensor), f"{what}: linear must return a tensor, got {type(out).__name__}"
    T, N = x.shape[0], qw.q.shape[0]
    assert tuple(out.shape) == (T, N), f"{what}: output shape {tuple(out.shape)}, expected {(T, N)}"
    assert out.dtype == x.dtype, f"{what}: linear must return x's dtype {x.dtype}, got {out.dtype}"
    lo, hi, y = bracket(x, qw)
    got = out.double().cpu()
    bad = ~((got >= lo) & (got <= hi))
    if bad.any():
        t, n = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.numel()} outputs are off; first y[{t}, {n}] = {got[t, n]:.8g}, "
            f"dequantize(w) @ x gives {y[t, n]:.8g} (allowed: {lo[t, n]:.8g} .. {hi[t, n]:.8g}) -- each weight is "
            "(q - zero) * scale with ITS row's (group's) scale and zero point, q signed int8, the sums in float32 "
            "and one rounding to x's dtype at the store")
    return out


def check(day, x, qw, what, **kw):
    return verify(day.linear(x, qw, **kw), x, qw, what)


# ---- one token: the GEMV ---------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_gemv_one_token(day, sizes, device, scheme, granularity):
    """T = 1, N odd. Per channel: K = 100 (a tail of 4 after the 16-wide steps, rows off 16 bytes),
    37 (odd) and 64 (16-byte loads); per tensor the first two; groups of 32 in rows of 96. One warp per row, a row
    split over two warps; fp16 and fp32 x."""
    N = sizes(tiny=3, real=999)
    f16, f32 = torch.float16, torch.float32
    cases = sizes(tiny=[(100, f16, 64, 2), (37, f32, 32, 1), (64, f16, 32, 1)][:3 if granularity == "channel" else 2],
                  real=[(1004, f16, 128, 2), (1003, f32, 128, 1), (4096, f16, 128, 1), (4096, f32, 256, 4)])
    if granularity == "group":
        cases = sizes(tiny=[(96, f16, 64, 2), (96, f32, 32, 1)], real=[(4096, f16, 128, 1), (4096, f32, 256, 4)])
    for K, dtype, block_size, wpr in cases:
        qw = quantized(N, K, scheme, granularity, seed=K, device=device)
        x = randn(1, K, seed=K + 1, dtype=dtype, device=device)
        check(day, x, qw, f"linear T=1 {scheme} per {granularity} K={K} N={N} {dtype} block_size={block_size} "
                          f"warps_per_row={wpr}", path="gemv", block_size=block_size, warps_per_row=wpr)


def test_gemv_long_rows_and_default_launch(day, device):
    """K = 400 on one warp: lanes take several 16-wide steps (a pair, then an odd last one), then a
    tail of 16; and the default launch (no options)."""
    qw = quantized(3, 400, "asymmetric", "channel", seed=4, device=device)
    x = randn(1, 400, seed=5, dtype=torch.float16, device=device)
    check(day, x, qw, "linear T=1 asymmetric K=400 N=3 block_size=32", path="gemv", block_size=32)
    qw = quantized(3, 48, "symmetric", "channel", seed=6, device=device)
    check(day, randn(1, 48, seed=7, device=device), qw, "linear(x, w) T=1 symmetric K=48 N=3")


@pytest.mark.parametrize("group_size,scheme", [(16, "asymmetric"), (48, "symmetric"), (96, "asymmetric")])
def test_group_sizes(day, device, group_size, scheme):
    """Groups of 16 (one load per group), 48 (three loads, not a power of two) and 96 (the whole
    row): each 16 weights a lane loads use the scale and zero point of the group they are in."""
    K = 96
    qw = quantized(3, K, scheme, "group", group_size=group_size, seed=group_size, device=device)
    for T, path in ((1, "gemv"), (2, "skinny")):
        x = randn(T, K, seed=group_size + T, device=device)
        check(day, x, qw, f"linear T={T} path={path!r} {scheme} groups of {group_size} in rows of {K}",
              path=path, block_size=32)


def test_gemv_groups_across_steps(day, device):
    """K = 1536 in groups of 64 on one warp: each lane takes a pair of 16-wide steps 512 columns apart
    (two loads in flight, in different groups), then an odd last step -- every load with its own
    group's scale and zero point."""
    qw = quantized(2, 1536, "asymmetric", "group", group_size=64, seed=8, device=device)
    x = randn(1, 1536, seed=9, dtype=torch.float16, device=device)
    check(day, x, qw, "linear T=1 asymmetric groups of 64, K=1536 N=2 block_size=32", path="gemv", block_size=32)


# ---- a few tokens and many ------------------------------------------------------------------------
def test_skinny_few_tokens(day, sizes, device):
    """T = 3: one group of tokens, most slots empty; each token its own row of x, the weights read
    once for all of them. Per channel K = 100 (no 16-byte loads) and per group K = 96 (16-byte
    loads), N odd, fp16 and fp32 (two warps per row: test_two_launches_agree)."""
    N = sizes(tiny=3, real=999)
    cases = sizes(tiny=[("symmetric", "channel", 100, torch.float16, 32, 1),
                        ("asymmetric", "group", 96, torch.float32, 32, 1)],
                  real=[(s, "channel", 1004, torch.float16, 128, 2) for s in SCHEMES]
                  + [(s, "group", 2048, dt, 256, 4) for s in SCHEMES for dt in DTYPES])
    for scheme, granularity, K, dtype, block_size, wpr in cases:
        qw = quantized(N, K, scheme, granularity, seed=K, device=device)
        for T in sizes(tiny=[3], real=[3, 9, 16]):
            x = randn(T, K, seed=T, dtype=dtype, device=device)
            check(day, x, qw, f"linear path='skinny' T={T} {scheme} per {granularity} K={K} N={N} {dtype} "
                              f"block_size={block_size} warps_per_row={wpr}", path="skinny",
                  block_size=block_size, warps_per_row=wpr)


def test_skinny_second_group_of_tokens(day, device):
    """T = 17 forced onto the skinny path: a full group of 16 tokens, then a second group of one."""
    qw = quantized(1, 64, "asymmetric", "group", group_size=32, seed=17, device=device)
    x = randn(17, 64, seed=17, dtype=torch.float16, device=device)
    check(day, x, qw, "linear path='skinny' T=17 asymmetric groups of 32 K=64 N=1", path="skinny", block_size=32)


def test_gemm_many_tokens(day, device):
    """T = 17, K = 40 / 96, N = 18: 2 x 2 output tiles with edges, 3 or 6 steps over K; per channel
    (a scale per row) and in groups with zero points (per tensor: test_default_path)."""
    cases = [("symmetric", "channel", 40, torch.float16), ("asymmetric", "group", 96, torch.float32)]
    for scheme, granularity, K, dtype in cases:
        qw = quantized(18, K, scheme, granularity, seed=K, device=device)
        x = randn(17, K, seed=3, dtype=dtype, device=device)
        check(day, x, qw, f"linear path='gemm' T=17 {scheme} per {granularity} K={K} N=18 {dtype}", path="gemm")


@pytest.mark.parametrize("T,scheme,granularity", [(1, "symmetric", "channel"), (3, "asymmetric", "channel"),
                                                   (17, "asymmetric", "tensor")])
def test_default_path(day, device, T, scheme, granularity):
    """What the engine calls: no options, T = 1 (decode), 3 (a verify) and 17 (a prefill)."""
    qw = quantized(5, 64, scheme, granularity, seed=T, device=device)
    x = randn(T, 64, seed=T + 10, dtype=torch.float16, device=device)
    check(day, x, qw, f"linear(x, w) T={T} {scheme} per {granularity} K=64 N=5 fp16")


# ---- values chosen by hand -------------------------------------------------------------------------
@pytest.mark.parametrize("T,path", [(1, "gemv"), (2, "skinny"), (3, "gemm")])
def test_zero_points_at_the_int8_extremes(day, device, T, path):
    """Asymmetric weights whose zero points sit at -128 and 127 (and 0): q - zero spans -255 .. 255,
    which int8 arithmetic would wrap. Rows of q at -128 and 127, and negative q everywhere: a
    byte read as unsigned (0xFF = 255, not -1) or a zero point left out is off by hundreds of steps."""
    g = torch.Generator().manual_seed(T)
    N, K, gs = 6, 64, 16
    q = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    q[0], q[1, :gs], q[2] = 127, -128, -1
    zero = torch.tensor([[-128], [127], [0], [-128], [127], [-5]], dtype=torch.int8).repeat(1, K // gs)
    zero[5] = torch.tensor([-128, 127, 0, 64], dtype=torch.int8)            # per group: each its own
    scale = (torch.rand(N, K // gs, generator=g) + 0.5) / 256
    x = randn(T, K, seed=T, device=device)
    layouts = (("group", scale, zero), ("channel", scale[:, :1].contiguous(), zero[:, :1].contiguous()))
    for gran, sc, z in layouts[:2 if path == "gemm" else 1]:             # the GEMM: cheap in the simulator
        qw = hand_made(q.to(device), sc.to(device), z.to(device), gs if gran == "group" else K, gran)
        check(day, x, qw, f"linear T={T} path={path!r} asymmetric per {gran}, zero points -128 / 127 / 0",
              path=path, block_size=32)
    if path == "gemv":
        sym = hand_made(q.clamp(-127, 127).to(device), scale[:, :1].contiguous().to(device), None, K, "channel")
        check(day, x, sym, f"linear T={T} path={path!r} symmetric per channel, q from -127 to 127", path=path,
              block_size=32)


@pytest.mark.parametrize("T,path", [(1, "gemv"), (2, "skinny"), (2, "gemm")])
def test_accumulates_in_fp32_and_rounds_once(day, device, T, path):
    """x = [1024, 0.3125, 0.3125, ...] in fp16, q = 4 with scale 1/4: an fp16 running sum (or fp16
    partial sums) stays at 1024; only fp32 sums rounded once at the store give the oracle's fp16
    value 1049 (1024 + 79 * 0.3125 = 1048.6875)."""
    K, N = 80, 3
    x = torch.full((T, K), 0.3125, dtype=torch.float16, device=device)
    x[:, 0] = 1024.0
    q = torch.full((N, K), 4, dtype=torch.int8, device=device)
    qw = hand_made(q, torch.full((N, 1), 0.25, device=device), None, K, "channel")
    out = check(day, x, qw, f"linear T={T} path={path!r} fp16, 1024 then 79 x 0.3125, q=4 scale=1/4",
                path=path, block_size=32)
    assert (out.float().cpu() == 1049.0).all(), f"expected 1049 everywhere, got {out.cpu().tolist()}"


@pytest.mark.parametrize("path,scheme,T,N", [("gemv", "symmetric", 1, 8), ("skinny", "asymmetric", 4, 3),
                                              ("gemm", "asymmetric", 16, 16)])
def test_no_extra_rounding_in_fp16(day, sizes, device, path, scheme, T, N):
    """fp16 x with weights and products that fp16 cannot hold: rounding each product (or each
    dequantized weight) to fp16 moves the fp32 sum by about 2^-12 * sqrt(K) of its size -- enough
    to flip the last bit of some fp16 outputs, which the bound above does not allow."""
    N, K = sizes(tiny=(N, 64), real=(999, 2048))
    qw = quantized(N, K, scheme, "channel", seed=17, device=device)
    x = randn(T, K, seed=18, dtype=torch.float16, device=device)
    check(day, x, qw, f"linear T={T} path={path!r} {scheme} fp16 K={K} N={N}", path=path, block_size=32)


# ---- layouts: views, alignment, guard bands ----------------------------------------------------------
def test_strided_and_misaligned_operands(day, device):
    """x one element off a 16-byte boundary, x every other row of a bigger tensor, x a transposed
    view, q a column slice of a wider matrix: no 16-byte load is allowed on any of them."""
    K, N = 64, 3
    sym = quantized(N, K, "symmetric", "channel", seed=21, device=device)
    asym = quantized(N, K, "asymmetric", "channel", seed=22, device=device)
    off = randn(1, K + 1, seed=23, dtype=torch.float16, device=device)[:, 1:]
    check(day, off, sym, "linear T=1 symmetric fp16, x off a 16-byte boundary", path="gemv", block_size=32)
    rows = randn(4, K, seed=24, device=device)[::2]
    check(day, rows, asym, "linear T=2 asymmetric fp32, x every other row", path="skinny", block_size=32)
    xt = randn(K, 3, seed=25, dtype=torch.float16, device=device).t()
    check(day, xt, asym, "linear T=3 asymmetric fp16, x a transposed view", path="gemm")
    wide = quantized(N, K + 16, "asymmetric", "channel", seed=25, device=device)
    sliced = QuantWeight(wide.q[:, 1:K + 1], wide.scale, wide.zero, K, "asymmetric", "channel", torch.float16)
    x = randn(1, K, seed=26, dtype=torch.float16, device=device)
    check(day, x, sliced, "linear T=1 asymmetric, q a column slice (rows off 16 bytes)", path="gemv", block_size=32)


def guard_banded_empty(monkeypatch):
    """torch.empty hands out memory with a NaN guard band right behind it; returns the bands."""
    real_empty, bands = torch.empty, []

    def empty_with_guard_band(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        n = math.prod(shape)
        buf = poison_(real_empty(n + 64, **kwargs))
        bands.append(buf[n:])
        return buf[:n].view(shape)

    monkeypatch.setattr(torch, "empty", empty_with_guard_band)
    return bands


@pytest.mark.parametrize("T,path", [(1, "gemv"), (3, "skinny"), (3, "gemm")])
def test_writes_only_its_outputs(day, device, monkeypatch, T, path):
    """N = 1 row with 4 warps per block, T = 3 tokens in a group of more: rows past N and token
    slots past T must not be written; every output must be (NaN-poisoned memory shows one that is not)."""
    qw = quantized(1, 48, "asymmetric", "channel", seed=31, device=device)
    x = randn(T, 48, seed=32, device=device)
    bands = guard_banded_empty(monkeypatch)
    check(day, x, qw, f"linear T={T} N=1 path={path!r} block_size=128", path=path, block_size=128)
    for band in bands:
        assert torch.isnan(band).all(), f"linear T={T} N=1 path={path!r}: wrote past the end of the output"


def test_two_launches_agree(day, device):
    """Rows split over 2 and 4 warps combine through shared memory after a barrier: two launches on
    the same input must agree bit for bit."""
    x = randn(2, 256, seed=42, dtype=torch.float16, device=device)
    qw = quantized(1, 256, "asymmetric", "group", group_size=64, seed=41, device=device)
    for T, path, wpr in ((1, "gemv", 4), (2, "skinny", 2)):
        kw = dict(path=path, block_size=32 * wpr, warps_per_row=wpr)
        a, b = day.linear(x[:T], qw, **kw), day.linear(x[:T], qw, **kw)
        assert_deterministic(a, b, f"linear path={path!r} warps_per_row={wpr}")
        verify(a, x[:T], qw, f"linear path={path!r} T={T} warps_per_row={wpr}")


# ---- the dispatch ------------------------------------------------------------------------------------
def previous_linear(track):
    """The linear the registry gave before this day: the highest finished day below it, else the reference."""
    return registry.resolve_before("linear", track, DAY)


@pytest.mark.parametrize("T,dtype", [(1, torch.float16), (3, torch.float32)])
def test_plain_tensors_go_to_the_previous_linear(day, track, device, T, dtype):
    """A plain weight is not this day's business: the output must be the previous linear's, bit for
    bit, and its options pass through unchanged."""
    prev = previous_linear(track)
    x = randn(T, 40, seed=T, dtype=dtype, device=device)
    w = randn(3, 40, seed=T + 1, scale=40 ** -0.5, dtype=dtype, device=device)
    got, want = day.linear(x, w), prev(x, w)
    assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want), \
        (f"linear(x, plain {dtype} w) T={T} must be {prev.__module__}.linear's output exactly -- dispatch on "
         "the weight's type: isinstance(w, QuantWeight), else the previous day's linear")
    if T == 1 and "path" in inspect.signature(prev).parameters:
        got, want = day.linear(x, w, path="gemm"), prev(x, w, path="gemm")
        assert torch.equal(got, want), "linear(x, plain w, path='gemm'): the options must pass through"


@pytest.mark.parametrize("T,scheme", [(1, "symmetric"), (3, "asymmetric")])
def test_no_host_reads(day, device, T, scheme):
    """linear runs inside the captured decode step: nothing may read a tensor back to the host, for
    a QuantWeight or a plain weight."""
    x = randn(T, 32, seed=51, device=device)
    qw = quantized(3, 32, scheme, "channel", seed=52, device=device)
    w = randn(3, 32, seed=53, device=device)
    with no_host_reads():
        out = day.linear(x, qw)
        day.linear(x, w)
    verify(out, x, qw, f"linear T={T} {scheme} under the no-host-read guard")


def test_inputs_untouched(day, device):
    qw = quantized(3, 48, "asymmetric", "group", group_size=16, seed=61, device=device)
    x = randn(2, 48, seed=62, device=device)
    keep = [t.clone() for t in (x, qw.q, qw.scale, qw.zero)]
    day.linear(x, qw)
    day.linear(x[:1], qw)
    assert all(torch.equal(a, b) for a, b in zip((x, qw.q, qw.scale, qw.zero), keep)), \
        "linear must not modify x, q, scale or zero"


BAD = {
    "in differs": lambda x, qw: (x[:, :32], qw, {}),
    "x 1-D": lambda x, qw: (x[0], qw, {}),
    "x bfloat16": lambda x, qw: (x.bfloat16(), qw, {}),
    "x int8": lambda x, qw: (x.to(torch.int8), qw, {}),
    "group of 8": lambda x, qw: (x, ref.quantize_int8(weight_like(3, 64), granularity="group", group_size=8), {}),
    "unknown path": lambda x, qw: (x, qw, dict(path="cublas")),
    "gemv with T=2": lambda x, qw: (torch.cat([x, x]), qw, dict(path="gemv")),
    "block_size 48": lambda x, qw: (x, qw, dict(block_size=48)),
    "warps_per_row 3": lambda x, qw: (x, qw, dict(warps_per_row=3)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_one_line_value_errors(day, device, case):
    """A QuantWeight of the wrong shape (and the rest a caller can get wrong): a one-line ValueError
    that says what to do, before any kernel runs."""
    qw = quantized(3, 64, "symmetric", "channel", device=device)
    x, w, kw = BAD[case](randn(1, 64, device=device), qw)
    w = to(w, device)
    with pytest.raises(ValueError) as e:
        day.linear(x, w, **kw)
    msg = str(e.value).strip()
    assert msg and "\n" not in msg, f"{case}: one line, please: {msg!r}"


# ---- real sizes (GPU) ----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("N,K", [(2048, 2048), (512, 2048), (8192, 2048), (2048, 8192)])
def test_real_shapes_16_byte_loads(day, device, N, K):
    """Llama-3.2-1B's projections, fp16, contiguous and aligned (the 16-byte-load path) for T = 1
    (GEMV), 2, 5, 16 (skinny), 17 and 64 (past the crossover), per channel and in groups of 128;
    and the same weights read through a misaligned x (the element-load path): both within the bound."""
    for scheme, gran in (("symmetric", "channel"), ("asymmetric", "group")):
        qw = quantized(N, K, scheme, gran, group_size=128, seed=N + K, device=device)
        for T in (1, 2, 5, 16, 17, 64):
            x = randn(T, K, seed=T, dtype=torch.float16, device=device)
            check(day, x, qw, f"linear T={T} {scheme} per {gran} {K}->{N} fp16")
        off = randn(1, K + 1, seed=3, dtype=torch.float16, device=device)[:, 1:]
        check(day, off, qw, f"linear T=1 {scheme} per {gran} {K}->{N}, x off 16 bytes")


@pytest.mark.gpu
@pytest.mark.parametrize("block_size,warps_per_row", [(64, None), (256, 1), (256, 8), (1024, 1), (1024, 32)])
def test_launch_configs_real_shape(day, device, block_size, warps_per_row):
    qw = quantized(576, 1536, "asymmetric", "group", group_size=64, seed=block_size, device=device)
    for T, path in ((1, "gemv"), (7, "skinny")):
        x = randn(T, 1536, seed=T, dtype=torch.float16, device=device)
        check(day, x, qw, f"linear {path} 1536->576 block_size={block_size} warps_per_row={warps_per_row}",
              path=path, block_size=block_size, warps_per_row=warps_per_row)


@pytest.mark.gpu
def test_graph_replay_equals_eager(day, device):
    """The decode step is captured once and replayed (day 23): the replay must give the eager output."""
    qw = quantized(2048, 2048, "symmetric", "channel", seed=7, device=device)
    x = randn(1, 2048, seed=8, dtype=torch.float16, device=device)
    eager = day.linear(x, qw)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        day.linear(x, qw)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = day.linear(x, qw)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager), "linear(x, QuantWeight) replayed from a CUDA graph differs from the eager call"


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_w8a16_vs_fp16_gemv(day, device):
    """One decode token through Llama-3.2-1B's q/o, gate/up and lm_head weights: the int8 GEMV
    (per channel, symmetric) vs the fp16 GEMV of the previous day on the same weights, same run,
    graph-replayed, weights cold in L2. Bytes per weight fall from 2 to 1 + 4 / in; the int8 GEMV
    must be at least MIN_SPEEDUP faster. Also recorded: the bytes each moves per second vs the peak."""
    props = torch.cuda.get_device_properties(device)
    peak = 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8 / 1e9
    result, slow = {"device": torch.cuda.get_device_name(), "peak_GBps": round(peak)}, []
    for N, K in BENCH_SHAPES:
        w = randn(N, K, seed=N, scale=K ** -0.5, dtype=torch.float16, device=device)
        qw = ref.quantize_int8(w)
        x = randn(1, K, seed=K, dtype=torch.float16, device=device)
        check(day, x, qw, f"linear bench {K}->{N}")
        fp16 = cold_copies(lambda: w.clone(), w.numel() * 2)
        int8 = cold_copies(lambda: QuantWeight(qw.q.clone(), qw.scale.clone(), None, K, "symmetric", "channel",
                                        torch.float16), qw.nbytes)
        t16 = graph_ms([lambda w=w: day.linear(x, w) for w in fp16])
        t8 = graph_ms([lambda w=w: day.linear(x, w) for w in int8])
        io = (K + N) * 2                                  # x in, y out (fp16)
        b16, b8 = N * K * 2 + io, qw.nbytes + io
        result[f"{N}x{K}"] = dict(fp16_us=round(t16 * 1e3, 2), int8_us=round(t8 * 1e3, 2),
                                  speedup=round(t16 / t8, 2), bytes_ratio=round(b16 / b8, 2),
                                  fp16_GBps=round(b16 / t16 / 1e6), int8_GBps=round(b8 / t8 / 1e6))
        if t16 / t8 < MIN_SPEEDUP[(N, K)]:
            slow.append(f"{N}x{K}: {t8 * 1e3:.1f} us vs fp16 {t16 * 1e3:.1f} us")
        del fp16, int8
    record_bench("day41_w8a16_vs_fp16_gemv_llama_1b", result)
    assert not slow, ("the int8 GEMV is not enough faster than the fp16 one on " + "; ".join(slow)
                      + " -- see the lesson's 'What to measure': 16-byte loads of q, two in flight per lane")


def test_the_cpu_reference_takes_a_quantweight_too():
    """The engine's CPU path (shared/reference's linear) dispatches on the weight's type like day 41,
    so a learner without a GPU can compare quantized outputs: the same oracle, not a second rule."""
    w = randn(9, 48, seed=41)
    x = randn(3, 48, seed=42)
    for scheme in ("symmetric", "asymmetric"):
        q = ref.quantize_int8(w, scheme=scheme, granularity="group", group_size=16)
        got = ref.linear(x, q)
        want = (x.double() @ dequantize(q, torch.float32).double().T).float()
        assert got.shape == (3, 9) and torch.allclose(got, want, atol=1e-5, rtol=1e-5), \
            f"reference.linear(x, QuantWeight {scheme}) differs from dequantize-then-matmul"
    assert torch.equal(ref.linear(x, w), x @ w.T), "reference.linear on a plain tensor changed"
