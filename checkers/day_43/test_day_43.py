"""Day 43 checker: W8A8 -- the per-token activation quantizer, the int8 x int8 -> int32 products
(dp4a), `linear` for a QuantWeight with int8 activations, and norm_linear / linear_add on top.
Run: pytest checkers/day_43

Oracles, none taken from the solution:
- integers are exact: the int32 results must equal a @ b.T computed in int64 by torch on the CPU
  (on a GPU also torch._int_mm, int8 tensor cores), to the bit;
- the quantizer is day 40's symmetric rule applied row by row, restated here in float32 (scale =
  clip * max|x[t]| / 127, q = clamp(rint(x / scale), -127, 127)), and its round trip is bounded by
  its scale: |x - q * scale| <= scale / 2 for every value inside the clip;
- linear's output is float32(I) * scale_w * scale_x rounded to x's dtype, with I the exact integer
  product of the quantized rows: allowed a few float32 roundings (groups: an fp32 sum of G terms);
- against the FLOAT product x @ w.T, the error is bounded by both scales: per element of y,
  sum_k (|x_k| * scale_w / 2 + |w^_k| * scale_x / 2) (w^ the dequantized weight) plus roundings.
"""
import pytest
import torch

from shared import reference
from shared.course import registry
from shared.course.testing import assert_close, no_host_reads, randn, record_bench
from shared.quant import QuantWeight, dequantize

DAY = 43
U = 2.0 ** -24                     # float32's unit roundoff
HALF_ULP = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11}
SUBNORMAL_HALF_STEP = {torch.float16: 2.0 ** -25, torch.float32: 2.0 ** -150}   # rounding below the smallest normal


# ---- inputs --------------------------------------------------------------------------------------------
def activations(T, K, dtype=torch.float32, device="cpu", seed=0):
    """Tokens at very different magnitudes (a scale taken from another token is far off), one 10x
    outlier per row (it sets the row's scale), a zero row and a constant row when T >= 4."""
    x = randn(T, K, seed=seed) * torch.tensor([1.0, 0.01, 40.0, 3.0])[torch.arange(T) % 4][:, None]
    x[torch.arange(T), torch.arange(T) * 7 % K] *= 10.0
    if T >= 4:
        x[1] = 0.0
        x[3] = -0.75
    return x.to(dtype=dtype, device=device)


def w8a8(rows, cols, granularity="channel", group_size=16, seed=0, device="cpu"):
    """A W8A8 QuantWeight (day 40's reference quantizer, symmetric): rows of very different sizes."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, 1, generator=g)) * cols ** -0.5
    qw = reference.quantize_int8(w, granularity=granularity, group_size=group_size)
    return QuantWeight(qw.q.to(device), qw.scale.to(device), None, qw.group_size, "symmetric", qw.granularity,
                       qw.dtype, "int8"), w


# ---- the oracles ---------------------------------------------------------------------------------------
def quantize_rule(x, clip=1.0):
    """Day 40's symmetric rule per token, in float32 (a true division by 127, half to even)."""
    xf = x.float().cpu()
    scale = torch.tensor(clip, dtype=torch.float32) * xf.abs().amax(1, keepdim=True) / torch.tensor(127.0)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.round(xf / scale).clamp(-127, 127).to(torch.int8), scale


def int_product(a, b):
    """a @ b.T in int64 on the CPU: exact."""
    return a.cpu().long() @ b.cpu().long().T


def check_int32(got, a, b, what):
    want = int_product(a, b)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int32 and tuple(got.shape) == tuple(want.shape), \
        f"{what}: must return int32 {tuple(want.shape)}, got {getattr(got, 'dtype', None)} {getattr(got, 'shape', None)}"
    bad = got.cpu().long() != want
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {want.numel()} int32 results differ; first [{i}, {j}]: "
                             f"got {int(got[i, j])}, expected {int(want[i, j])} (integers must be exact)")


def expected_linear(x, qw):
    """(y in float64, allowed error): float32(I) * scale_w * scale_x, I the exact integer product of x
    quantized per token with the weight's int8 rows; per group the fp32 sum over G groups."""
    xq, sx = quantize_rule(x)
    K = x.shape[1]
    G = K // qw.group_size
    a = xq.long().view(-1, G, qw.group_size)
    b = qw.q.cpu().long().view(-1, G, qw.group_size)
    I_g = torch.einsum("tgk,ngk->tng", a, b).double()                     # [T, N, G], exact
    sw = qw.scale.cpu().double().view(-1, G)                               # [N or 1, G]
    terms = I_g * sw.unsqueeze(0)
    y = terms.sum(-1) * sx.double()
    err = ((G + 3) * U * terms.abs().sum(-1) * sx.double() + HALF_ULP[x.dtype] * y.abs()
           + SUBNORMAL_HALF_STEP[x.dtype])
    return y, err


def check_linear(day, x, qw, what, **kw):
    out = day.linear(x, qw, **kw)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (x.shape[0], qw.shape[0]) and out.dtype == x.dtype, \
        (f"{what}: linear must return [T, out] = {(x.shape[0], qw.shape[0])} in x's dtype {x.dtype}, got "
         f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}")
    y, err = expected_linear(x, qw)
    diff = (out.double().cpu() - y).abs()
    bad = ~(diff <= err + 1e-30)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {y.numel()} outputs off; first [{i}, {j}]: got "
                             f"{float(out[i, j]):.7g}, expected {float(y[i, j]):.7g} +- {float(err[i, j]):.3g} "
                             "(int32 sum of the int8 rows, times the row's weight scale, times the token's scale)")
    return out


# ---- the activation quantizer ----------------------------------------------------------------------------
@pytest.mark.parametrize("T,K,dtype,block_size", [(1, 64, torch.float16, 32), (5, 37, torch.float32, 64),
                                                   (6, 130, torch.float16, 128)])
def test_quantizer_is_the_symmetric_rule_per_token(day, device, T, K, dtype, block_size):
    """Every int8 value and every scale equal day 40's rule row by row; a zero row has scale 1 and
    q = 0; a constant row is all +-127; each value comes back within half its scale."""
    x = activations(T, K, dtype, device, seed=T)
    q, scale = day.quantize_activations(x, block_size=block_size)
    want_q, want_s = quantize_rule(x)
    assert q.dtype == torch.int8 and tuple(q.shape) == (T, K), f"q must be int8 [T, in] = {(T, K)}, got {q.dtype} {tuple(q.shape)}"
    assert scale.dtype == torch.float32 and tuple(scale.shape) == (T, 1), \
        f"scale must be float32 [T, 1] (one per token), got {scale.dtype} {tuple(scale.shape)}"
    assert torch.equal(scale.cpu(), want_s), f"scales {scale.cpu().view(-1).tolist()} != clip * max|x[t]| / 127 = " \
                                             f"{want_s.view(-1).tolist()}"
    bad = q.cpu() != want_q
    assert not bad.any(), (f"{int(bad.sum())} int8 values differ from clamp(rint(x / scale), -127, 127); first at "
                           f"{tuple(int(i) for i in bad.nonzero()[0])}")
    back = q.cpu().float() * scale.cpu()
    assert ((back - x.float().cpu()).abs() <= scale.cpu() / 2 * (1 + 1e-6)).all(), "round trip past scale / 2"
    if T >= 4:
        assert float(scale[1, 0]) == 1.0 and not q[1].any(), "a zero row: scale 1 and every q 0"
        assert (q[3] == -127).all(), "a constant row: every value is the row's max, so q = -127"


def test_quantizer_rounds_half_to_even_and_clamps(day, device):
    """Scale 1 exactly (max|x| = 127): x / scale is exact, so ties show the rounding (2.5 -> 2, 3.5 -> 4,
    -3.5 -> -4, not truncated); with clip = 0.5 every value past 63.5 saturates at +-127."""
    row = torch.tensor([127.0, 2.5, 3.5, -3.5, -2.5, 0.5, 1.5, 100.0, -127.0, 63.0, -64.0, 0.7, -0.7, 126.6, 5.0, 6.0])
    x = torch.stack([row, -row.flip(0)]).to(device)
    q, scale = day.quantize_activations(x, block_size=32)
    want, _ = quantize_rule(x)
    assert torch.equal(q.cpu(), want), f"ties must round half to even: got {q[0].tolist()}, expected {want[0].tolist()}"
    q, scale = day.quantize_activations(x, clip=0.5, block_size=32)
    want, want_s = quantize_rule(x, clip=0.5)
    assert torch.equal(scale.cpu(), want_s) and torch.equal(q.cpu(), want), \
        f"clip 0.5: values past clip * max must saturate at +-127: got {q[0].tolist()}, expected {want[0].tolist()}"


# ---- int8 x int8 -> int32 -----------------------------------------------------------------------------------
# (M, K, N, path, block_size, warps_per_row): K = 37 and 52 (a partial last word / 16-byte step: byte
# loads), 64 (16-byte loads); M = 9 > 8 tokens (two grid rows of the skinny kernel), 17 (two tiles)
INT_CASES = [(1, 37, 5, "gemv", 32, None), (1, 64, 7, "gemv", 64, 2), (3, 52, 6, "skinny", 32, None),
             (9, 64, 3, "skinny", 64, 2), (17, 52, 18, "tiled", None, None), (2, 64, 5, "auto", None, None)]


@pytest.mark.parametrize("M,K,N,path,block_size,warps_per_row", INT_CASES)
def test_int8_matmul_is_exact(day, device, M, K, N, path, block_size, warps_per_row):
    """Random int8 (the extremes -128 and 127 included) through every path: int32 equal to int64's."""
    g = torch.Generator().manual_seed(M * 100 + K)
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    a[0, :4], b[0, :4] = torch.tensor([-128, 127, -1, -128], dtype=torch.int8), -128
    got = day.int8_matmul(a.to(device), b.to(device), path=path, block_size=block_size, warps_per_row=warps_per_row)
    check_int32(got, a, b, f"int8_matmul M={M} K={K} N={N} path={path}")


def test_signs_of_every_byte_of_a_word(day, device):
    """One row of -1s and a row with -1 in each byte position in turn: a byte read as unsigned (255) or a
    sign that spills into the next byte when four are packed into a word changes the sum."""
    a = torch.tensor([[-1, 2, -3, 4, -5, 6, -7, 8], [1, -1, 1, -1, -127, 127, -127, 127]], dtype=torch.int8)
    b = torch.tensor([[-1] * 8, [-1, 0, 0, 0, 0, -1, 0, 0], [0, 0, -1, 0, 0, 0, 0, -1]], dtype=torch.int8)
    check_int32(day.int8_matmul(a.to(device), b.to(device), path="skinny", block_size=32), a, b, "signed bytes")
    x = torch.tensor([[-1.0, 2.0, -3.0, 127.0, -5.0, 6.0, -7.0, -8.0]], device=device)
    q, _ = day.quantize_activations(x, block_size=32)
    assert torch.equal(q.cpu(), quantize_rule(x)[0]), f"negative activations packed wrongly: {q.tolist()}"


def test_int32_sums_past_float32_precision(day, device):
    """K = 4096 of products near 127 x 113: sums near 6e7, and halves of them near 3e7 crossing the
    warp's last shuffle, past 2^24 where a float32 (a float sum, the float shuffle) keeps only
    multiples of 2 or 4. Integers must stay integers to the end."""
    K = 4096
    g = torch.Generator().manual_seed(43)
    a = torch.randint(100, 128, (2, K), generator=g, dtype=torch.int8)
    a[1] = -a[1]
    b = torch.randint(100, 128, (3, K), generator=g, dtype=torch.int8)
    want = int_product(a, b)
    assert (want.abs() > 2 ** 24).all() and (want.float().long() != want).any(), "the test needs sums a float rounds"
    check_int32(day.int8_matmul(a[:1].to(device), b.to(device), path="gemv", block_size=32), a[:1], b,
                f"K={K}, path=gemv")
    half = K // 2                                   # the tiled kernel: sums near 3e7 are enough (and cheaper)
    check_int32(day.int8_matmul(a[:, :half].to(device), b[:, :half].to(device), path="tiled"), a[:, :half],
                b[:, :half], f"K={half}, path=tiled")


# ---- linear: W8A8 ------------------------------------------------------------------------------------------
LINEAR_CASES = [("channel", torch.float16, 1, 64, 7, "gemv", 32),
                ("channel", torch.float32, 1, 37, 5, "auto", 64),
                ("tensor", torch.float16, 5, 52, 6, "skinny", 32),
                ("group", torch.float32, 1, 64, 5, "gemv", 32),
                ("group", torch.float16, 4, 48, 9, "skinny", 64),
                ("channel", torch.float32, 17, 36, 17, "tiled", None),
                ("group", torch.float32, 6, 64, 4, "tiled", None)]


@pytest.mark.parametrize("granularity,dtype,T,K,N,path,block_size", LINEAR_CASES)
def test_linear_is_the_scaled_int32_product(day, device, granularity, dtype, T, K, N, path, block_size):
    """Per token x scale, per row (or group) w scale, exact integers in between: T = 1 and T > 1, odd
    sizes, every path and granularity, fp16 and fp32 activations."""
    qw, _ = w8a8(N, K, granularity, group_size=16, seed=K + N, device=device)
    x = activations(T, K, dtype, device, seed=T + K)
    check_linear(day, x, qw, f"{granularity} {dtype} T={T} K={K} N={N} path={path}", path=path,
                 block_size=block_size)


@pytest.mark.parametrize("granularity,T,K,N,path", [("channel", 1, 64, 6, "gemv"), ("group", 5, 48, 7, "skinny")])
def test_error_against_the_float_product_is_bounded_by_both_scales(day, device, granularity, T, K, N, path):
    """|y - x @ w.T| <= sum_k |x_k| scale_w / 2 + |w^_k| scale_x / 2 (+ roundings): the int8 grids of
    x and w are each at most half a step off. Also: the result is NOT day 41's W8A16 (x really is
    quantized): on these inputs the two differ."""
    qw, w = w8a8(N, K, granularity, group_size=16, seed=3, device=device)
    x = activations(T, K, torch.float32, device, seed=5)
    out = day.linear(x, qw, path=path, block_size=32).double().cpu()
    _, sx = quantize_rule(x)
    wd = dequantize(qw).double().cpu()
    sw = qw.scale.cpu().double().repeat_interleave(qw.group_size, 1).expand(N, K)
    xs = x.double().cpu()
    bound = xs.abs() @ (sw / 2).T + sx.double() / 2 * wd.abs().sum(1) + (K + 4) * 4 * U * (xs.abs() @ w.double().abs().T)
    err = (out - xs @ w.double().T).abs()
    assert (err <= bound).all(), f"error {float((err - bound).max()):.3g} past the bound from the scales"
    w8a16 = reference.linear_w8a16(x, qw.with_activations("float")).double().cpu()
    assert not torch.allclose(out, w8a16, rtol=1e-6, atol=1e-7), \
        "the output equals the W8A16 product: x must be quantized per token first (dp4a multiplies int8 by int8)"


def test_zero_and_constant_tokens(day, device):
    """A zero token gives an exact zero row; a constant token c gives c's int8 127 (or -127) times the
    sum of each row: its scale is |c| / 127."""
    qw, _ = w8a8(5, 48, seed=9, device=device)
    x = torch.zeros(3, 48, device=device)
    x[1] = 0.3
    x[2] = -2.0
    out = check_linear(day, x, qw, "zero / constant tokens", path="skinny", block_size=32)
    assert not out[0].any(), "a zero token must give exactly 0"


def test_other_weights_go_to_the_previous_day(day, device):
    """A plain tensor and a W8A16 QuantWeight are not this day's: they go to the linear of the previous
    finished day (W8A16: x stays float), with the options given."""
    qw, w = w8a8(6, 32, seed=2, device=device)
    x = activations(2, 32, device=device, seed=4)
    prev = registry.resolve_before("linear", day.__name__.split(".")[0], DAY)
    assert_close(day.linear(x, w.to(device)), prev(x, w.to(device)), "plain tensor")
    w16 = qw.with_activations("float")
    assert_close(day.linear(x, w16), prev(x, w16), "W8A16 QuantWeight")


# ---- norm_linear / linear_add with W8A8 weights (the engine's decode step) -----------------------------------
EPS = 1e-5


def test_norm_linear_and_linear_add(day, device):
    """rmsnorm(h) quantized per token, then the product; the rotary and SwiGLU epilogues on the product;
    linear_add rounds the product to h's dtype, then adds: each against the reference composition.
    The engine's decode step calls them, so none may read a value back to the host."""
    K, hd = 32, 8
    h = activations(1, K, torch.float16, device, seed=11)
    nw = (1.0 + 0.5 * randn(K, seed=12)).to(torch.float16).to(device)
    qw, _ = w8a8(4 * hd, K, seed=13, device=device)
    inv_freq = (1.0 / 500.0 ** (torch.arange(0, hd, 2).float() / hd)).to(device)
    positions = torch.tensor([37], dtype=torch.int32, device=device)
    for kw in (dict(), dict(rope=(positions, inv_freq, 3)), dict(gated=True)):
        with no_host_reads():
            got = day.norm_linear(h, nw, EPS, qw, **kw)
        want = reference.norm_linear(h, nw, EPS, qw, **kw)
        assert_close(got, want, f"norm_linear W8A8 {list(kw) or 'plain'}", atol=2e-3, rtol=2e-3)
    x = activations(1, 4 * hd, torch.float16, device, seed=14)
    wo, _ = w8a8(K, 4 * hd, seed=15, device=device)
    hh, want = h.clone(), h.clone()
    with no_host_reads():
        day.linear_add(x, wo, hh)
    reference.linear_add(x, wo, want)
    assert_close(hh, want, "linear_add W8A8: h + rounded product", atol=2e-3, rtol=2e-3)


# ---- bad input ---------------------------------------------------------------------------------------------
def _bad(device):
    qw, _ = w8a8(4, 32, seed=1, device=device)
    x = torch.ones(2, 32, device=device)
    g8 = QuantWeight(qw.q, torch.ones(4, 4, device=device), None, 8, "symmetric", "group", torch.float32, "int8")
    return {
        "x int": lambda d: d.linear(x.int(), qw),
        "in differs": lambda d: d.linear(torch.ones(2, 31, device=device), qw),
        "group of 8": lambda d: d.linear(x, g8),
        "path": lambda d: d.linear(x, qw, path="gemm"),
        "gemv with T=2": lambda d: d.linear(x, qw, path="gemv"),
        "block 48": lambda d: d.linear(x, qw, block_size=48),
        "warps_per_row 3": lambda d: d.linear(x, qw, block_size=128, warps_per_row=3),
        "matmul float": lambda d: d.int8_matmul(x, qw.q),
        "matmul K": lambda d: d.int8_matmul(qw.q[:, :16], qw.q),
        "clip 0": lambda d: d.quantize_activations(x, clip=0.0),
        "quantize int": lambda d: d.quantize_activations(qw.q),
    }


@pytest.mark.parametrize("case", ["x int", "in differs", "group of 8", "path", "gemv with T=2", "block 48",
                                  "warps_per_row 3", "matmul float", "matmul K", "clip 0", "quantize int"])
def test_bad_inputs_raise_one_line_value_errors(day, device, case):
    with pytest.raises(ValueError) as e:
        _bad(device)[case](day)
    assert "\n" not in str(e.value).strip(), "one line, please"


def test_asymmetric_weights_cannot_take_int8_activations():
    qw = reference.quantize_int8(randn(4, 32), scheme="asymmetric")
    with pytest.raises(ValueError, match="symmetric"):
        qw.with_activations("int8")


# ---- GPU: dp4a's PTX, torch._int_mm, and where W8A8 starts to pay -------------------------------------------
LLAMA_1B = {"wqkv": (3072, 2048), "w_gate_up": (16384, 2048), "w_down": (2048, 8192)}


@pytest.mark.gpu
def test_dp4a_equals_torch_int_mm_on_real_shapes(day, device):
    """The PTX dp4a path (16-byte loads, every path) against torch._int_mm (int8 tensor cores) and
    int64: exact, on Llama-3.2-1B's shapes."""
    for name, (N, K) in LLAMA_1B.items():
        g = torch.Generator().manual_seed(N)
        b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8).to(device)
        for M, path in ((1, "gemv"), (8, "skinny"), (32, "skinny"), (48, "tiled")):
            a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8).to(device)
            got = day.int8_matmul(a, b, path=path)
            want = torch._int_mm(a if M > 16 else torch.cat([a, a.new_zeros(17 - M, K)]), b.T)[:M]
            assert torch.equal(got, want), f"{name} M={M} path={path}: differs from torch._int_mm"
            check_int32(got, a, b, f"{name} M={M} path={path}")
        qw, _ = w8a8(N, K, seed=N, device=device)
        for T in (1, 5, 40):
            check_linear(day, activations(T, K, torch.float16, device, seed=T), qw, f"{name} linear T={T}")


@pytest.mark.gpu
def test_graph_replay_equals_eager_and_never_syncs(day, device):
    qw, _ = w8a8(3072, 2048, seed=7, device=device)
    x = activations(1, 2048, torch.float16, device)
    eager = day.linear(x, qw)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        day.linear(x, qw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
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
    assert torch.equal(out, eager), "linear(W8A8) replayed from a CUDA graph differs from the eager call"


@pytest.mark.gpu
def test_engine_w8a8_graphs_equal_eager(day, track, tiny_model):
    """The engine's --quant w8a8 on your kernels (day 43 is finished on this track, or the test
    skips): graph replay gives eager's greedy tokens (day 23's rule), and both stay near the CPU
    reference path's logits."""
    from shared.engine import Engine
    if DAY not in registry.finished(track):
        pytest.skip("the engine's --quant w8a8 needs a finished day 43 on this track")
    graphed = Engine(str(tiny_model), track=track, dtype="fp16", quant="w8a8")
    eager = Engine(str(tiny_model), track=track, dtype="fp16", quant="w8a8", graphs=False)
    ids = graphed.prompt_ids("graph == eager, int8 activations")
    assert list(graphed.generate_ids(ids, max_new_tokens=24)) == list(eager.generate_ids(ids, max_new_tokens=24))


BENCH_T = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_w8a8_vs_w8a16_vs_fp16_over_tokens(day, track, device):
    """One run, one GPU, Llama-3.2-1B's gate/up matrix [16384, 2048]: GPU microseconds per call (graph
    replay) over T tokens of fp16 linear (the track's; and cuBLAS through torch), W8A16 (the track's
    linear on a QuantWeight: day 41), your W8A8 (quantizer + dp4a) and W8A8 on int8 tensor cores
    (the quantizer, torch._int_mm, the scales). Recorded for the lesson's plot; ratios are same-run,
    and nothing here is a speed gate."""
    from shared.course.testing import graph_us
    N, K = LLAMA_1B["w_gate_up"]
    w = randn(N, K, seed=1, scale=K ** -0.5, dtype=torch.float16, device=device)
    q16 = reference.quantize_int8(w)
    q8 = q16.with_activations("int8")
    track_linear = registry.resolve("linear", track)
    result = {"gpu": torch.cuda.get_device_name(), "track": track, "shape": [N, K], "T": list(BENCH_T), "us": {}}
    methods = {
        "fp16 (track)": lambda x: track_linear(x, w),
        "fp16 cuBLAS": lambda x: torch.nn.functional.linear(x, w),
        "w8a16 (track)": lambda x: track_linear(x, q16),
        "w8a8 dp4a (yours)": lambda x: day.linear(x, q8),
        "w8a8 int8 tensor cores": lambda x: w8a8_int_mm(day, x, q8),
        "int8 GEMM only: dp4a": None,
        "int8 GEMM only: _int_mm": None,
    }
    for name in methods:
        result["us"][name] = []
    for T in BENCH_T:
        x = randn(T, K, seed=T, dtype=torch.float16, device=device)
        xq, _ = day.quantize_activations(x)
        xp = xq if T > 16 else torch.cat([xq, xq.new_zeros(17 - T, K)])
        for name, fn in methods.items():
            if name == "int8 GEMM only: dp4a":
                fn = lambda x: day.int8_matmul(xq, q8.q)            # noqa: E731
            elif name == "int8 GEMM only: _int_mm":
                fn = lambda x: torch._int_mm(xp, q8.q.T)            # noqa: E731
            result["us"][name].append(round(graph_us(lambda: fn(x), calls=10, reps=10), 2))
    us = result["us"]
    result["w8a8_over_w8a16"] = [round(a / b, 3) for a, b in zip(us["w8a8 dp4a (yours)"], us["w8a16 (track)"])]
    result["w8a8_tc_over_fp16_cublas"] = [round(a / b, 3) for a, b in zip(us["w8a8 int8 tensor cores"],
                                                                          us["fp16 cuBLAS"])]
    record_bench("day_43_w8a8_over_tokens", result)
    assert all(v > 0 for series in us.values() for v in series), f"a method has no time: {result}"


def w8a8_int_mm(day, x, qw):
    """W8A8 on int8 tensor cores: your quantizer, torch._int_mm (T > 16: its limit), the two scales."""
    xq, sx = day.quantize_activations(x)
    T = x.shape[0]
    if T <= 16:
        xq = torch.cat([xq, xq.new_zeros(17 - T, xq.shape[1])])
    return (torch._int_mm(xq, qw.q.T)[:T].float() * qw.scale.view(1, -1) * sx).to(x.dtype)
