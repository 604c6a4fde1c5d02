"""Day 42 checker: the int8 decode GEMVs with day 54's fusions (norm_linear, linear_add for a
QuantWeight), the engine's quantize_weights, and decode_bytes.
Run: pytest checkers/day_42

Oracles: the kernels are checked against x @ dequantize(w).T in float64 (shared.quant.dequantize:
the weights the int8 values and scales stand for), with x the row day 10's RMSNorm makes
(transformers' LlamaRMSNorm) and day 54's epilogues on top: the same numbers the fp16 kernels of
day 54 compute from dequantized weights, up to fp32 rounding. Where the rounding order is the
point, inputs are built so the oracle is exact and the allowed outputs are a bracket: any fp32
sum of K products lies within gamma_n * sum |x w| of the exact one (gamma_n = n u / (1 - n u),
u = 2^-24, n = K + 4: day 41's bound), rounded once to the output's dtype. quantize_weights is
checked on the tiny model against quantize_int8 of the fused matrices; decode_bytes against
numbers worked out by hand for the tiny config.
"""
import collections
import dataclasses
import inspect
import math

import pytest
import torch

from shared import reference
from shared.course import registry
from shared.course.testing import assert_close, assert_deterministic, no_host_reads, poison_, randn, record_bench, tol
from shared.quant import QuantWeight, dequantize
from shared.weights import fuse_projections

DAY = 42
U = 2.0 ** -24                     # float32's unit roundoff


# ---- inputs ----------------------------------------------------------------------------------------
def weight_like(rows, cols, seed=0):
    """Rows of very different sizes (a row's scale is its own: a scale taken from the wrong row is far
    off), a few 8x outliers, rows shifted off 0 (asymmetric zero points away from -128)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.exp(0.7 * torch.randn(rows, 1, generator=g)) * cols ** -0.5
    idx = torch.randint(0, rows * cols, (max(1, rows * cols // 50),), generator=g)
    w.view(-1)[idx] *= 8.0
    return w + 0.5 * cols ** -0.5 * torch.rand(rows, 1, generator=g)


def to(qw, device):
    return QuantWeight(qw.q.to(device), qw.scale.to(device), None if qw.zero is None else qw.zero.to(device),
                       qw.group_size, qw.scheme, qw.granularity, qw.dtype)


def quantized(rows, cols, scheme="symmetric", granularity="channel", group_size=32, seed=0, device="cpu"):
    """A QuantWeight from the reference quantizer (day 40's semantics)."""
    return to(reference.quantize_int8(weight_like(rows, cols, seed), scheme=scheme, granularity=granularity,
                                      group_size=group_size), device)


def hidden(T, K, dtype, device, seed=0):
    """The residual stream: rows at scales where eps matters (1e-4) and where it does not."""
    scales = torch.tensor([1.0, 1e-4, 30.0])[torch.arange(T) % 3][:, None]
    return (randn(T, K, seed=seed) * scales).to(dtype=dtype, device=device)


def norm_weight(K, dtype, device, seed=0):
    return (1.0 + 0.5 * randn(K, seed=seed + 7)).to(dtype=dtype, device=device)


def hf_rmsnorm(x, weight, eps):
    """transformers' own LlamaRMSNorm with our weight and eps (on the CPU): the x the GEMV multiplies."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    norm = LlamaRMSNorm(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight.cpu())
        return norm(x.cpu())


EPS = 1e-5


# ---- the oracle ------------------------------------------------------------------------------------
def gemv(x, qw):
    """x @ dequantize(w).T in float64 (CPU)."""
    return x.double().cpu() @ dequantize(qw).double().cpu().T


def expected_norm_linear(h, nw, qw, gated=False, rope=None):
    """Day 54's norm_linear on dequantized weights: HF's RMSNorm, the product, and the epilogue
    (gated / rotary: the product rounded to h's dtype first, as the unfused GEMV stores it)."""
    y = gemv(hf_rmsnorm(h, nw, EPS), qw)
    if gated:
        F = qw.shape[0] // 2
        return reference.silu_mul(y[:, :F].to(h.dtype), y[:, F:].to(h.dtype))
    if rope is not None:
        positions, inv_freq, heads = rope
        y = y.to(h.dtype)
        hd = 2 * inv_freq.shape[0]
        qk = y[:, :heads * hd].view(y.shape[0], heads, hd)
        reference.rope(qk, qk[:, :0], positions.cpu(), inv_freq.cpu())
    return y


def check_norm_linear(day, h, nw, qw, what, gated=False, rope=None, scale=1.0, **kw):
    out = day.norm_linear(h, nw, EPS, qw, gated=gated, rope=rope, **kw)
    rows = qw.shape[0] // 2 if gated else qw.shape[0]
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (h.shape[0], rows) and out.dtype == h.dtype, \
        (f"{what}: norm_linear must return [T, out] = {(h.shape[0], rows)} in h's dtype {h.dtype}, got "
         f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}")
    assert_close(out, expected_norm_linear(h, nw, qw, gated, rope), f"{what}: rmsnorm(h) @ dequantize(w).T",
                 **tol(h.dtype, scale))
    return out


def bracket(x, qw, dtype):
    """(lo, hi): the outputs allowed for x @ dequantize(w).T summed in fp32 in any order, rounded
    once to dtype (day 41's bound)."""
    y = gemv(x, qw)
    n = x.shape[1] + 4
    e = n * U / (1 - n * U) * (x.double().abs().cpu() @ dequantize(qw).double().abs().cpu().T)
    return (y - e).to(dtype).double(), (y + e).to(dtype).double(), y


# ---- norm_linear with int8 weights ------------------------------------------------------------------
# (scheme, granularity, dtype, T, K, N, block_size): K = 100 (a tail of 4 after the 16-wide chunks,
# rows off 16 bytes: element loads), 96 and 64 (16-byte loads), 48 (three chunks: the odd one alone);
# N odd (the last pair of rows has one row); more items than warps (blocks loop); 1-3 tokens.
PLAIN = [("symmetric", "channel", torch.float16, 1, 100, 13, 32),
         ("asymmetric", "group", torch.float32, 2, 96, 9, 64),
         ("symmetric", "tensor", torch.float16, 1, 64, 7, 64),
         ("asymmetric", "channel", torch.float16, 3, 48, 21, 32)]


@pytest.mark.parametrize("scheme,granularity,dtype,T,K,N,block_size", PLAIN)
def test_norm_linear_int8_matches_dequantized(day, device, scheme, granularity, dtype, T, K, N, block_size):
    """rmsnorm(h) @ dequantize(w).T for every scheme and granularity, odd shapes, several launches."""
    qw = quantized(N, K, scheme, granularity, seed=K + N, device=device)
    h, nw = hidden(T, K, dtype, device, seed=K), norm_weight(K, dtype, device, seed=K)
    check_norm_linear(day, h, nw, qw, f"norm_linear {scheme} per {granularity} T={T} K={K} N={N} {dtype} "
                                      f"block_size={block_size}", block_size=block_size)


def test_groups_across_a_lanes_chunks(day, device):
    """in = 1088 in groups of 64: a lane's chunks c, c + 32 (two loads in flight, 512 columns apart)
    and c + 64 (an odd one alone) lie in different groups, each with its own scale and zero point."""
    qw = quantized(3, 1088, "asymmetric", "group", group_size=64, seed=11, device=device)
    h, nw = hidden(1, 1088, torch.float32, device, seed=11), norm_weight(1088, torch.float32, device, seed=11)
    check_norm_linear(day, h, nw, qw, "norm_linear asymmetric groups of 64, in = 1088 (three chunks a lane)",
                      block_size=32)


@pytest.mark.parametrize("scheme,granularity,dtype,K,F,block_size", [
    ("symmetric", "channel", torch.float16, 64, 9, 32), ("asymmetric", "group", torch.float32, 96, 5, 64)])
def test_gated_is_the_swiglu_of_gate_and_up(day, device, scheme, granularity, dtype, K, F, block_size):
    """gated=True: w = [gate; up] (2F rows, each with its own scale) and the result is silu(gate) * up."""
    qw = quantized(2 * F, K, scheme, granularity, seed=F, device=device)
    h, nw = hidden(2, K, dtype, device, seed=F), norm_weight(K, dtype, device, seed=F)
    check_norm_linear(day, h, nw, qw, f"gated norm_linear {scheme} per {granularity} K={K} F={F} {dtype}",
                      gated=True, block_size=block_size)


@pytest.mark.parametrize("scheme,granularity,dtype,heads,rotated,hd,K,block_size", [
    ("symmetric", "channel", torch.float16, 5, 3, 8, 40, 32), ("asymmetric", "tensor", torch.float32, 4, 3, 16, 64, 64)])
def test_rotary_rotates_q_and_k_heads(day, device, scheme, granularity, dtype, heads, rotated, hd, K, block_size):
    """rope=(positions, inv_freq, rotated): w is heads of hd rows (q, k, then v); the first `rotated`
    heads come out as day 12 rotates them (element i with i + hd/2), each row with its own scale;
    two tokens, one at a large position (the angle's range)."""
    qw = quantized(heads * hd, K, scheme, granularity, seed=heads * hd, device=device)
    h, nw = hidden(2, K, dtype, device, seed=hd), norm_weight(K, dtype, device, seed=hd)
    positions = torch.tensor([3, 4099], dtype=torch.int32, device=device)
    inv_freq = (1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd)).to(device)
    check_norm_linear(day, h, nw, qw, f"rotary norm_linear {scheme} per {granularity} heads={heads} hd={hd} {dtype}",
                      rope=(positions, inv_freq, rotated), scale=4, block_size=block_size)


def exact_rows(T, K, seed):
    """fp16 rows of +-k/8 with k in [16, 32): every sum of squares is exact in fp32, so the normalized
    row is HF's bit for bit (day 54) and the oracle below it is exact."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(16, 32, (T, K), generator=g).float() / 8
    return (k * (torch.randint(0, 2, (T, K), generator=g).float() * 2 - 1)).half()


def test_fp16_sums_are_fp32_rounded_once(day, device):
    """fp16, 24 rows of 64 int8 weights: the output must lie in day 41's bracket around the exact
    product of HF's normalized row -- a sum rounded to fp16 anywhere before the store (a chunk's
    partial sum, a row's total before the scale) moves some last bits out of it."""
    K, N = 64, 24
    h = exact_rows(1, K, seed=5).to(device)
    nw = norm_weight(K, torch.float16, device, seed=5)
    for scheme, gran in (("symmetric", "channel"), ("asymmetric", "group")):
        qw = quantized(N, K, scheme, gran, group_size=32, seed=6, device=device)
        lo, hi, y = bracket(hf_rmsnorm(h, nw, EPS), qw, torch.float16)
        got = day.norm_linear(h, nw, EPS, qw, block_size=64).double().cpu()
        bad = ~((got >= lo) & (got <= hi))
        assert not bad.any(), (f"fp16 norm_linear {scheme} per {gran}: {int(bad.sum())} of {got.numel()} outputs outside "
                               f"the bracket, first at {tuple(bad.nonzero()[0].tolist())}: got {got[bad][0]:.6g}, exact "
                               f"{y[bad][0]:.8g} -- sum in fp32 (times the scale) and let the store round once")


def test_gated_rounds_gate_and_up_like_the_unfused_step(day, device):
    """w = [diag(a); diag(b)] with a, b int8 values times a power-of-two scale: gate = a x and up = b x
    are exact in fp32 but not fp16 numbers, so only the roundings differ. Day 54's order: gate and up
    rounded to fp16 (the GEMV's output), then silu(gate) * up in fp32, rounded once."""
    K = 64
    g = torch.Generator().manual_seed(41)
    h = torch.randn(3, K, generator=g).half().to(device)
    nw = norm_weight(K, torch.float16, device, seed=41)
    qa, qb = (torch.randint(64, 128, (K,), generator=g, dtype=torch.int8) for _ in range(2))
    q = torch.cat([torch.diag(qa), torch.diag(qb)]).to(torch.int8)
    qw = QuantWeight(q.to(device), torch.full((2 * K, 1), 2.0 ** -7, device=device), None, K, "symmetric", "channel",
                     torch.float16)
    x = hf_rmsnorm(h, nw, EPS).float()
    want = reference.silu_mul((x * qa.float() / 128).half(), (x * qb.float() / 128).half())
    out = day.norm_linear(h, nw, EPS, qw, gated=True, block_size=64).cpu()
    differ = int((out != want).sum())
    assert differ <= out.numel() // 50, (
        f"gated fp16 norm_linear: {differ} of {out.numel()} values differ from silu_mul(gate, up) with gate and up rounded "
        "to fp16 first -- round the two sums to h's dtype, then silu(gate) * up in fp32")


@pytest.mark.parametrize("T,scheme", [(1, "asymmetric"), (2, "symmetric")])
def test_zero_points_and_signs_at_the_int8_extremes(day, device, T, scheme):
    """Rows of q at -128, 127 and -1, zero points at -128 and 127 (q - zero spans -255 .. 255), K = 72 so
    8 columns go through the tail: a byte read as unsigned (0xFF = 255, not -1) or a zero point left
    out moves a row by hundreds of steps."""
    g = torch.Generator().manual_seed(T)
    N, K = 6, 72
    q = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    q[0], q[1], q[2, ::2] = 127, -128, -1
    scale = ((torch.rand(N, 1, generator=g) + 0.5) / 64).to(device)
    if scheme == "asymmetric":
        zero = torch.tensor([[-128], [127], [0], [-128], [127], [-5]], dtype=torch.int8, device=device)
    else:
        q, zero = q.clamp(-127, 127), None
    qw = QuantWeight(q.to(device), scale, zero, K, scheme, "channel", torch.float16)
    h, nw = hidden(T, K, torch.float32, device, seed=T), norm_weight(K, torch.float32, device, seed=T)
    check_norm_linear(day, h, nw, qw, f"norm_linear {scheme}, q and zero points at -128 / 127 / -1", block_size=32)
    x, hh = randn(T, K, seed=T + 3, device=device), randn(T, N, seed=T + 4, device=device)
    want = hh.double().cpu() + gemv(x, qw)
    day.linear_add(x, qw, hh, block_size=32)
    assert_close(hh, want, f"linear_add {scheme}, q and zero points at -128 / 127 / -1", **tol(torch.float32))


# ---- linear_add with int8 weights --------------------------------------------------------------------
@pytest.mark.parametrize("scheme,granularity,dtype,T,K,N,block_size", [
    ("symmetric", "channel", torch.float32, 1, 50, 11, 32), ("asymmetric", "group", torch.float16, 2, 64, 7, 64)])
def test_linear_add_int8_matches_dequantized(day, device, scheme, granularity, dtype, T, K, N, block_size):
    """h += x @ dequantize(w).T in place; x and w untouched; nothing returned."""
    qw = quantized(N, K, scheme, granularity, seed=K, device=device)
    x, h = randn(T, K, seed=K, dtype=dtype, device=device), randn(T, N, seed=N, dtype=dtype, device=device)
    want = (h.double().cpu() + gemv(x, qw).to(dtype).double())
    x0, q0, ptr = x.clone(), qw.q.clone(), h.data_ptr()
    ret = day.linear_add(x, qw, h, block_size=block_size)
    assert ret is None and h.data_ptr() == ptr, "linear_add updates h in place and returns None"
    assert_close(h, want, f"linear_add {scheme} per {granularity} T={T} K={K} N={N} {dtype}", **tol(dtype))
    assert torch.equal(x, x0) and torch.equal(qw.q, q0), "linear_add must not modify x or the weight"


def fp16_between(lo, hi):
    """Every fp16 value from lo to hi (fp16 values held as float64), element by element: a list of fp16
    tensors, the first lo, each next one an ulp up where it is still below hi."""
    v, top, out = lo.half(), hi.half(), [lo.half()]
    while bool((v < top).any()):
        bits = v.view(torch.int16).int()
        up = torch.where(v > 0, bits + 1, torch.where(v < 0, bits - 1, torch.ones_like(bits)))
        v = torch.where(v < top, up.to(torch.int16).view(torch.float16), v)
        out.append(v)
    return out


def test_linear_add_rounds_the_product_then_the_sum(day, device):
    """fp16: h + rnd(x @ w.T), each rounded to fp16 (HF's o_proj output, then its residual add). x and q
    positive and the scale a power of two: the product's bracket is one or two fp16 values, so the
    result is known bit for bit -- adding the fp32 sum to h (one rounding) differs in many places."""
    T, K, N = 2, 64, 24
    g = torch.Generator().manual_seed(7)
    x = torch.randn(T, K, generator=g).abs().half()
    q = torch.randint(1, 128, (N, K), generator=g, dtype=torch.int8)
    qw = QuantWeight(q, torch.full((N, 1), 2.0 ** -10), None, K, "symmetric", "channel", torch.float16)
    h = (torch.randn(T, N, generator=g) * 4).half()
    lo, hi, _ = bracket(x, qw, torch.float16)
    allowed = [(h.double() + t.double()).half() for t in fp16_between(lo, hi)]
    got = h.to(device)
    day.linear_add(x.to(device), to(qw, device), got, block_size=64)
    got = got.cpu()
    bad = torch.stack([got != a for a in allowed]).all(0)
    assert not bad.any(), (f"fp16 linear_add: {int(bad.sum())} of {got.numel()} values differ from h + (x @ w.T rounded "
                           f"to fp16), first at {tuple(bad.nonzero()[0].tolist())} -- round the row's sum to h's dtype, "
                           "then add h[t, n] (two roundings, as HF)")


# ---- memory, determinism, dispatch, capture-safety, bad input ---------------------------------------
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


@pytest.mark.parametrize("N", [1, 3])
def test_writes_only_its_outputs(day, device, monkeypatch, N):
    """An odd number of rows: the last warp's second row does not exist and must not be written
    (nothing past the output), and every output must be (NaN-poisoned memory shows one that is not)."""
    qw = quantized(N, 48, "symmetric", "channel", seed=N, device=device)
    h, nw = hidden(2, 48, torch.float32, device, seed=N), norm_weight(48, torch.float32, device)
    bands = guard_banded_empty(monkeypatch)
    check_norm_linear(day, h, nw, qw, f"norm_linear N={N} (odd) T=2", block_size=64)
    for band in bands:
        assert torch.isnan(band).all(), f"norm_linear N={N}: wrote past the end of the output"
    monkeypatch.undo()
    x = randn(2, 48, seed=9, device=device)
    buf = randn(2 * N + 8, seed=10, device=device)
    h2 = buf[:2 * N].view(2, N)
    rest = buf[2 * N:].clone()
    day.linear_add(x, qw, h2, block_size=64)
    assert torch.equal(buf[2 * N:], rest), f"linear_add N={N}: wrote past the end of h"


def test_two_launches_agree(day, device):
    """Warps sum through shuffles and the normalized row through shared memory after a barrier: two
    launches on the same input must agree bit for bit."""
    qw = quantized(6, 80, "asymmetric", "group", group_size=16, seed=3, device=device)
    h, nw = hidden(1, 80, torch.float16, device, seed=3), norm_weight(80, torch.float16, device)
    a, b = (day.norm_linear(h, nw, EPS, qw, block_size=64) for _ in range(2))
    assert_deterministic(a, b, "norm_linear int8")


def previous(name, track):
    return registry.resolve_before(name, track, DAY)


def test_plain_tensors_go_to_the_previous_day(day, track, device):
    """A plain weight is not this day's business: norm_linear and linear_add hand it, with the
    epilogue options, to the previous day that provides them (the reference), bit for bit."""
    w = randn(6, 40, seed=1, scale=40 ** -0.5, device=device)
    h, nw = hidden(1, 40, torch.float32, device, seed=2), norm_weight(40, torch.float32, device)
    got, want = day.norm_linear(h, nw, EPS, w, gated=True), previous("norm_linear", track)(h, nw, EPS, w, gated=True)
    assert isinstance(got, torch.Tensor) and torch.equal(got, want), \
        "norm_linear(h, plain w, gated=True) must be the previous norm_linear's output exactly: dispatch on the type"
    x = randn(1, 40, seed=3, device=device)
    mine = randn(1, 6, seed=4, device=device)
    theirs = mine.clone()
    day.linear_add(x, w, mine)
    previous("linear_add", track)(x, w, theirs)
    assert torch.equal(mine, theirs), "linear_add(x, plain w, h) must be the previous linear_add's update exactly"


def test_no_host_reads(day, device):
    """Both run inside the captured decode step: nothing may read a tensor back to the host."""
    qw = quantized(8, 32, "symmetric", "channel", seed=5, device=device)
    h, nw = hidden(1, 32, torch.float32, device, seed=5), norm_weight(32, torch.float32, device)
    positions = torch.tensor([7], dtype=torch.int32, device=device)
    inv_freq = (1.0 / 10000.0 ** (torch.arange(0, 4).float() / 4)).to(device)
    x, hh = randn(1, 32, seed=6, device=device), randn(1, 8, seed=7, device=device)
    with no_host_reads():
        out = day.norm_linear(h, nw, EPS, qw, rope=(positions, inv_freq, 1), block_size=32)
        day.linear_add(x, qw, hh, block_size=32)
    assert torch.isfinite(out).all()


BAD = {
    "norm_linear: in differs": lambda d, h, nw, qw, x, hh: d.norm_linear(h[:, :16], nw[:16], EPS, qw),
    "norm_linear: h int8": lambda d, h, nw, qw, x, hh: d.norm_linear(h.to(torch.int8), nw, EPS, qw),
    "norm_linear: norm weight too short": lambda d, h, nw, qw, x, hh: d.norm_linear(h, nw[:7], EPS, qw),
    "norm_linear: group of 8": lambda d, h, nw, qw, x, hh: d.norm_linear(
        h, nw, EPS, reference.quantize_int8(weight_like(4, 32), granularity="group", group_size=8)),
    "norm_linear: gated with an odd w": lambda d, h, nw, qw, x, hh: d.norm_linear(h, nw, EPS, qw.rows(0, 3), gated=True),
    "norm_linear: rope positions not int32": lambda d, h, nw, qw, x, hh: d.norm_linear(
        h, nw, EPS, qw, rope=(torch.zeros(1, device=h.device), nw[:2], 1)),
    "norm_linear: block 48": lambda d, h, nw, qw, x, hh: d.norm_linear(h, nw, EPS, qw, block_size=48),
    "linear_add: h shape": lambda d, h, nw, qw, x, hh: d.linear_add(x, qw, hh[:, :3]),
    "linear_add: dtypes differ": lambda d, h, nw, qw, x, hh: d.linear_add(x, qw, hh.half()),
    "linear_add: strided h": lambda d, h, nw, qw, x, hh: d.linear_add(x, qw, torch.ones_like(hh.repeat(1, 2))[:, ::2]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_one_line_value_errors(day, device, case):
    """What a caller can get wrong, before any kernel runs: one line that says what to do."""
    qw = quantized(4, 32, device=device)
    h, nw = hidden(1, 32, torch.float32, device), norm_weight(32, torch.float32, device)
    x, hh = randn(1, 32, device=device), randn(1, 4, device=device)
    if case == "norm_linear: group of 8":
        h, nw = h.cpu(), nw.cpu()
    with pytest.raises(ValueError) as e:
        BAD[case](day, h, nw, qw, x, hh)
    msg = str(e.value).strip()
    assert msg and "\n" not in msg, f"{case}: one line, please: {msg!r}"


# ---- quantize_weights: the engine's --quant w8a16 at load time ---------------------------------------
@pytest.fixture(scope="module")
def reference_ops(track):
    return registry.Ops(track, overrides={n: getattr(reference, n) for n in reference.__all__})


def tiny_weights(tiny_model, fuse=True, device="cpu"):
    w = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return fuse_projections(w) if fuse else w


def shares_rows(part, whole, start):
    """Whether QuantWeight `part` is rows start.. of `whole`: the same int8 storage, not a copy."""
    return (part.q.untyped_storage().data_ptr() == whole.q.untyped_storage().data_ptr()
            and part.q.data_ptr() == whole.q[start].data_ptr() and part.q.shape[1:] == whole.q.shape[1:])


def test_quantize_weights_quantizes_each_fused_matrix_once(day, tiny_model, reference_ops):
    """wqkv and w_gate_up become one QuantWeight each -- the quantizer's result for the fused matrix
    -- and wq, wk, wv, w_gate, w_up row views of them (nothing stored twice); wo, w_down and the
    lm_head QuantWeights; norms and the embedding table untouched; returns the same object."""
    w = tiny_weights(tiny_model)
    keep = {i: {n: getattr(L, n).clone() for n in ("wqkv", "w_gate_up", "wo", "w_down")} for i, L in enumerate(w.layers)}
    embed, head, norms = w.embed.clone(), w.lm_head.clone(), [(L.attn_norm, L.mlp_norm) for L in w.layers]
    assert day.quantize_weights(w, reference_ops) is w, "quantize_weights returns the weights it was given"
    for i, L in enumerate(w.layers):
        for name in ("wqkv", "w_gate_up", "wo", "w_down"):
            got, want = getattr(L, name), reference.quantize_int8(keep[i][name])
            assert isinstance(got, QuantWeight), f"layer {i}: {name} is {type(got).__name__}, not a QuantWeight"
            assert torch.equal(got.q, want.q) and torch.equal(got.scale, want.scale), \
                f"layer {i}: {name} is not quantize_int8 of the fused matrix (per channel, symmetric)"
        for whole, parts in ((L.wqkv, ("wq", "wk", "wv")), (L.w_gate_up, ("w_gate", "w_up"))):
            start = 0
            for n in parts:
                part = getattr(L, n)
                assert isinstance(part, QuantWeight) and shares_rows(part, whole, start), \
                    f"layer {i}: {n} must be a row view of the fused QuantWeight (QuantWeight.rows), not its own copy"
                assert torch.equal(part.scale, whole.scale[start:start + part.shape[0]]), f"layer {i}: {n}'s scales"
                start += part.shape[0]
            assert start == whole.shape[0], f"layer {i}: the views do not cover the fused matrix"
        assert L.attn_norm is norms[i][0] and L.mlp_norm is norms[i][1], "the norms stay as they are"
    assert isinstance(w.lm_head, QuantWeight) and torch.equal(w.lm_head.q, reference.quantize_int8(head).q), \
        "the lm_head is quantized too (head=True)"
    assert isinstance(w.embed, torch.Tensor) and torch.equal(w.embed, embed), \
        "the embedding table stays in the model dtype (the lookup reads one row)"


def test_per_tensor_scale_is_the_fused_matrix_s(day, tiny_model, reference_ops):
    """granularity='tensor': ONE scale for all of wqkv, max|wqkv| / 127, shared by wq, wk and wv (and
    dequantizing any row of k or v gives it back within half a step). Quantizing wq, wk, wv first and
    concatenating mixes three scales into a matrix that keeps one."""
    w = tiny_weights(tiny_model)
    fused = [(L.wqkv.clone(), L.w_gate_up.clone()) for L in w.layers]
    day.quantize_weights(w, reference_ops, granularity="tensor")
    for L, (qkv, gate_up) in zip(w.layers, fused):
        for qw, orig, names in ((L.wqkv, qkv, ("wq", "wk", "wv")), (L.w_gate_up, gate_up, ("w_gate", "w_up"))):
            s = orig.abs().max() / 127
            assert qw.scale.shape == (1, 1) and torch.allclose(qw.scale[0, 0], s, rtol=1e-6), \
                f"per tensor: the fused matrix's one scale is max|w| / 127 = {float(s):.6g}, got {qw.scale.flatten()[:3]}"
            err = (dequantize(qw) - orig).abs().max()
            assert err <= s / 2 * (1 + 1e-5), f"per tensor: a row dequantizes {float(err):.3g} away (> scale / 2)"
            for n in names:
                assert getattr(L, n).scale.data_ptr() == qw.scale.data_ptr(), f"{n} must share the fused matrix's scale"


def test_options_reach_the_quantizer_and_head_stays(day, tiny_model, reference_ops):
    """Groups of 32 give [out, in / 32] scales; head=False leaves the lm_head alone (the same tensor)."""
    w = tiny_weights(tiny_model)
    head = w.lm_head
    day.quantize_weights(w, reference_ops, scheme="asymmetric", granularity="group", group_size=32, head=False)
    L = w.layers[0]
    assert L.wo.scale.shape == (L.wo.shape[0], L.wo.shape[1] // 32) and L.wo.zero is not None, \
        "scheme / granularity / group_size must reach ops.quantize_int8"
    assert L.w_down.scale.shape == (L.w_down.shape[0], L.w_down.shape[1] // 32)
    assert w.lm_head is head, "head=False: the lm_head stays as it is"


def test_quantizing_twice_changes_nothing_and_unfused_is_refused(day, tiny_model, reference_ops):
    w = tiny_weights(tiny_model)
    day.quantize_weights(w, reference_ops)
    first = [(L.wqkv, L.wo, L.w_gate_up, L.w_down) for L in w.layers] + [(w.lm_head,)]
    day.quantize_weights(w, reference_ops)
    again = [(L.wqkv, L.wo, L.w_gate_up, L.w_down) for L in w.layers] + [(w.lm_head,)]
    assert all(a is b for x, y in zip(first, again) for a, b in zip(x, y)), \
        "a second call must leave QuantWeights as they are (no second quantization)"
    assert all(shares_rows(L.wk, L.wqkv, L.wq.shape[0]) for L in w.layers), "after a second call wk is still a view"
    fuse_projections(w)               # the engine's runner calls it on every build: quantized views are fused
    assert all(L.wqkv is a[0] for L, a in zip(w.layers, first)), "fuse_projections must keep the quantized wqkv"
    with pytest.raises(ValueError) as e:
        day.quantize_weights(tiny_weights(tiny_model, fuse=False), reference_ops)
    assert "\n" not in str(e.value).strip(), "one line, please"


def dequantized_model(tiny_model, device="cpu"):
    """The fp32 tiny model with each matrix the fused step reads replaced by dequantize(quantize_int8(.))
    of itself (per channel, symmetric: the engine's default), made here without quantize_weights, on
    `device` (the engine's: a GPU engine runs its kernels on it)."""
    w = tiny_weights(tiny_model, device=device)
    for L in w.layers:
        for name in ("wqkv", "w_gate_up", "wo", "w_down"):
            setattr(L, name, dequantize(reference.quantize_int8(getattr(L, name))))
        q, kv = w.config.num_heads * w.config.head_dim, w.config.num_kv_heads * w.config.head_dim
        L.wq, L.wk, L.wv = L.wqkv[:q], L.wqkv[q:q + kv], L.wqkv[q + kv:]
        F = w.config.intermediate_size
        L.w_gate, L.w_up = L.w_gate_up[:F], L.w_gate_up[F:]
    w.lm_head = dequantize(reference.quantize_int8(w.lm_head))
    return w


def engine_with(tiny_model, track, weights):
    from shared.engine import Engine
    e = Engine(str(tiny_model), track=track, dtype="fp32")
    if weights is not None:
        e.weights = weights
    return e


def test_quantized_engine_is_the_model_with_dequantized_weights(day, tiny_model, track):
    """The engine with your quantize_weights (the CPU reference path: dequantize, then matmul) against
    the fp32 model whose matrices are dequantize(quantize_int8(w)): int8 values and scales ARE those
    weights, so every greedy token is the same and the logits agree to fp32 rounding."""
    eng = engine_with(tiny_model, track, None)
    fuse_projections(eng.weights)
    day.quantize_weights(eng.weights, eng.ops)
    ref = engine_with(tiny_model, track, dequantized_model(tiny_model, eng.device))
    for prompt in ("quantized weights are still weights", "int8 \u00e9\u00e8"):
        ids = eng.prompt_ids(prompt)
        ours, theirs = list(eng.generate_ids(ids, max_new_tokens=16)), list(ref.generate_ids(ids, max_new_tokens=16))
        assert ours == theirs, f"{prompt!r}: greedy tokens {ours} differ from the dequantized model's {theirs}"
        assert_close(eng.forward(ids), ref.forward(ids), f"{prompt!r}: logits of the quantized model", atol=1e-4,
                     rtol=1e-4)


def test_quantized_head_moves_each_logit_at_most_half_a_step(day, tiny_model, track):
    """The same quantized layers with the lm_head int8 and with it kept: the last hidden row x is the
    same, and each logit v moves by x @ (dequantize(head) - head)[v], at most scale_v / 2 * sum |x|
    (per channel, each weight within half a step of its row's grid) -- the bound the scales give."""
    engines, seen = [], {}
    for head in (True, False):
        e = engine_with(tiny_model, track, None)
        fuse_projections(e.weights)
        day.quantize_weights(e.weights, e.ops, head=head)
        engines.append(e)
    plain_head = engines[1].weights.lm_head
    qhead = engines[0].weights.lm_head
    assert isinstance(qhead, QuantWeight) and not isinstance(plain_head, QuantWeight)
    linear = engines[1].ops.linear

    def capture(x, w):
        if w is plain_head:
            seen["x"] = x.detach().clone()
        return linear(x, w)
    engines[1].ops._cache["linear"] = capture
    ids = engines[0].prompt_ids("half a step")
    a, b = engines[0].forward(ids), engines[1].forward(ids)
    bound = (seen["x"].abs().sum(-1, keepdim=True) * qhead.scale.T / 2) * (1 + 1e-4) + 1e-5
    over = (a - b).abs() > bound
    assert "x" in seen and not over.any(), (
        f"{int(over.sum())} logits move more than scale / 2 * sum |x| when the lm_head is quantized: the head must be "
        "quantize_int8 of the lm_head, row by row, and nothing else may change")
    assert (a - b).abs().max() > 0, "quantizing the lm_head changed no logit: is head=True quantizing it?"


# ---- decode_bytes ------------------------------------------------------------------------------------
def tiny_config(tiny_model):
    return reference.load_config(tiny_model)


# The tiny model: L = 2 layers, D = 64, 4 / 2 heads of 16, F = 96, V = 260. Per layer wqkv [128, 64] = 8192,
# wo [64, 64] = 4096, w_gate_up [192, 64] = 12288, w_down [64, 96] = 6144 values: 30720; two layers 61440;
# lm_head [260, 64] = 16640; all 78080. Rows: 128 + 64 + 192 + 64 = 448 a layer, 896, + 260 = 1156.
# Groups of 32: 128*2 + 64*2 + 192*2 + 64*3 = 960 a layer, 1920, + 260*2 = 2440.
# norms (2*2 + 1) * 64 = 320 values; embedding 64; kv 2 * 2 layers * 2 heads * 16 = 128 values a position;
# activations (64+128) + (64+128) + (64+96) + (96+128) = 768 a layer, 1536, + 64 = 1600 values, + 4 * 260 bytes.
TINY_BYTES = {
    "fp16, context 1": (dict(quant=None), dict(weights=156160, scales=0, norms=640, embedding=128, kv=512,
                                               activations=4240)),
    "w8a16, context 1": (dict(quant="w8a16"), dict(weights=78080, scales=4624, norms=640, embedding=128, kv=512,
                                                   activations=4240)),
    "w8a16 head kept, context 5": (dict(quant="w8a16", head=False, context=5),
                                   dict(weights=94720, scales=3584, norms=640, embedding=128, kv=1536, activations=4240)),
    "w8a16 groups of 32": (dict(quant="w8a16", group_size=32), dict(weights=78080, scales=9760, norms=640,
                                                                    embedding=128, kv=512, activations=4240)),
    "fp32, context 3": (dict(quant=None, context=3, dtype_bytes=4),
                        dict(weights=312320, scales=0, norms=1280, embedding=256, kv=2048, activations=7440)),
}


@pytest.mark.parametrize("case", list(TINY_BYTES))
def test_decode_bytes_of_the_tiny_model_by_hand(day, tiny_model, case):
    """Every kind of byte a decode token moves, worked out by hand above for the tiny config."""
    kw, want = TINY_BYTES[case]
    quant = kw.pop("quant")
    got = day.decode_bytes(tiny_config(tiny_model), quant, **kw)
    assert isinstance(got, dict) and set(got) == set(want), \
        f"{case}: decode_bytes returns {{kind: bytes}} for kinds {sorted(want)}, got {got!r}"
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    assert not wrong, f"{case}: (got, by hand) for {wrong} -- the docstring's rule, kind by kind"


def test_decode_bytes_on_real_shapes_says_why_int8_is_less_than_2x(day):
    """SmolLM2-135M and Llama-3.2-1B shapes: int8 halves the weights exactly (head included) and adds
    4 bytes a row; what stays in the model dtype (KV, activations, norms, the embedding row) is the
    same in both, so the ideal speedup is below 2 and falls as the context grows; keeping the head
    in fp16 costs more than a 0.3x of it on the 1B (a tied 128k x 2048 head is a fifth of its bytes)."""
    from shared.config import ModelConfig
    from shared.llama1b import config_dict
    d = config_dict()
    c1b = ModelConfig(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
                      num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
                      num_kv_heads=d["num_key_value_heads"], head_dim=d["head_dim"], rms_norm_eps=d["rms_norm_eps"],
                      rope_theta=d["rope_theta"], max_position_embeddings=d["max_position_embeddings"],
                      tie_word_embeddings=True)
    smol = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                       num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                       max_position_embeddings=8192, tie_word_embeddings=True)
    for name, c in (("SmolLM2", smol), ("Llama-3.2-1B", c1b)):
        ratios = []
        for context in (512, 8192):
            fp16, int8 = day.decode_bytes(c, None, context=context), day.decode_bytes(c, "w8a16", context=context)
            assert fp16["weights"] == 2 * int8["weights"], f"{name}: int8 weights are half of fp16's"
            assert all(fp16[k] == int8[k] for k in ("norms", "embedding", "kv", "activations")), \
                f"{name}: only weights and scales depend on the weights' format"
            ratios.append(sum(fp16.values()) / sum(int8.values()))
        assert 1 < ratios[1] < ratios[0] < 2, f"{name}: ideal speedups at 512 and 8192 tokens {ratios}"
    kept = day.decode_bytes(c1b, "w8a16", context=512, head=False)
    full = day.decode_bytes(c1b, None, context=512)
    assert sum(full.values()) / sum(kept.values()) < 1.7, "the 1B's lm_head kept in fp16 caps the speedup"


@pytest.mark.parametrize("kw", [dict(quant="w4a16"), dict(quant="w8a16", group_size=48)])
def test_decode_bytes_refuses_what_it_cannot_count(day, tiny_model, kw):
    quant = kw.pop("quant")
    with pytest.raises(ValueError) as e:
        day.decode_bytes(tiny_config(tiny_model), quant, **kw)
    assert "\n" not in str(e.value).strip(), "one line, please"


# ---- GPU: real shapes, graphs, the engine's decode speed ---------------------------------------------
LLAMA_1B = {"wqkv": (3072, 2048), "wo": (2048, 2048), "w_gate_up": (16384, 2048), "w_down": (2048, 8192)}


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [128, 256, 1024])
def test_real_shapes_fp16(day, device, block_size):
    """Llama-3.2-1B's four matrices through the 16-byte path, per channel and asymmetric groups of
    128, each epilogue; and an x one element off 16 bytes (the element loads)."""
    hd, heads = 64, 48
    inv_freq = (1.0 / 500000.0 ** (torch.arange(0, hd, 2).float() / hd)).to(device)
    positions = torch.tensor([1234], dtype=torch.int32, device=device)
    for scheme, gran in (("symmetric", "channel"), ("asymmetric", "group")):
        (N, K) = LLAMA_1B["wqkv"]
        qw = quantized(N, K, scheme, gran, group_size=128, seed=1, device=device)
        h, nw = hidden(1, K, torch.float16, device, seed=1), norm_weight(K, torch.float16, device)
        check_norm_linear(day, h, nw, qw, f"1B wqkv rope {scheme} {gran}", rope=(positions, inv_freq, 40), scale=4,
                          block_size=block_size)
        (N, K) = LLAMA_1B["w_gate_up"]
        qw = quantized(N, K, scheme, gran, group_size=128, seed=2, device=device)
        check_norm_linear(day, h, nw, qw, f"1B gate_up {scheme} {gran}", gated=True, block_size=block_size)
        off = hidden(1, K + 1, torch.float16, device, seed=3)[:, 1:]
        check_norm_linear(day, off, nw, qw.rows(0, 2048), f"1B gate rows, h off 16 bytes {scheme} {gran}",
                          block_size=block_size)
        for name in ("wo", "w_down"):
            (N, K) = LLAMA_1B[name]
            qw = quantized(N, K, scheme, gran, group_size=128, seed=4, device=device)
            x, hh = randn(1, K, seed=5, dtype=torch.float16, device=device), randn(1, N, seed=6, dtype=torch.float16,
                                                                                     device=device)
            want = hh.double().cpu() + gemv(x, qw).half().double()
            day.linear_add(x, qw, hh, block_size=block_size)
            assert_close(hh, want, f"1B {name} linear_add {scheme} {gran}", **tol(torch.float16))


@pytest.mark.gpu
def test_graph_replay_equals_eager_and_never_syncs(day, device):
    """The decode step is captured once and replayed (day 23): the replay must give the eager
    output, and no call may synchronise with the host (torch's sync-debug mode raises)."""
    qw = quantized(3072, 2048, seed=7, device=device)
    h, nw = hidden(1, 2048, torch.float16, device, seed=7), norm_weight(2048, torch.float16, device)
    eager = day.norm_linear(h, nw, EPS, qw)
    x, hh = randn(1, 2048, seed=8, dtype=torch.float16, device=device), torch.zeros(1, 3072, dtype=torch.float16,
                                                                                    device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        day.norm_linear(h, nw, EPS, qw)
        day.linear_add(x, qw, hh)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        day.norm_linear(h, nw, EPS, qw)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        out = day.norm_linear(h, nw, EPS, qw)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager), "norm_linear(QuantWeight) replayed from a CUDA graph differs from the eager call"


def int8_engine(day, path, track, head=True, **kw):
    """The engine on your kernels: the track's engine with your quantize_weights applied at load and
    your norm_linear / linear_add in its ops; a decode step that goes through them (day 54's fused
    forward: the track's if it is day 54's, else the reference composition)."""
    from shared.engine import Engine
    from shared.engine.quant import QuantOptions
    if 41 not in registry.finished(track):
        pytest.skip("the quantized engine's prefill needs a finished day 41 (linear for int8 weights)")
    e = Engine(str(path), track=track, dtype="fp16", **kw)
    fuse_projections(e.weights)
    day.quantize_weights(e.weights, e.ops, head=head)
    e.quant = QuantOptions("w8a16", None, head)
    e.ops._cache.update(norm_linear=day.norm_linear, linear_add=day.linear_add)
    if (e.ops.source("forward").day or 0) < 54:
        e.ops._cache["forward"] = reference.forward_fused
    return e


def decode_rate(engine, prompt_tokens=512, new_tokens=64, reps=3) -> float:
    """Decode tok/s of the engine as it runs (graphs, the device-fed loop), best of reps after a warm-up
    that captures every graph bucket the runs touch."""
    from shared.reference.benchmark import synthetic_prompt
    ids = synthetic_prompt(engine.config.vocab_size, prompt_tokens)
    list(engine.generate_ids(ids, max_new_tokens=new_tokens, ignore_eos=True))
    best = 0.0
    for _ in range(reps):
        list(engine.generate_ids(ids, max_new_tokens=new_tokens, ignore_eos=True))
        best = max(best, engine.stats.decode_tok_s)
    return best


MIN_SPEEDUP = 1.5      # the floor the checker asserts on the 1B shape (w8a16 / fp16 decode tok/s, graphs)
GOAL_SPEEDUP = 1.8     # issue 17's goal, recorded


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.parametrize("model", ["llama-1b", pytest.param("smollm2", marks=pytest.mark.model)])
def test_bench_decode_w8a16_vs_fp16(day, track, request, model):
    """One run, one GPU: decode tok/s of the fp16 engine and of the w8a16 engine on your kernels,
    graphs on, prompt 512 + 64 new tokens; and the kernel-only GPU ms per token of each (one graph
    replayed back to back). On the Llama-3.2-1B shape the int8 engine must be at least MIN_SPEEDUP
    faster (the goal, GOAL_SPEEDUP, is recorded); SmolLM2 (launch-bound: 213 small kernels) is reported."""
    from shared import models
    from shared.bench import gpu_ms_per_token, peak_bandwidth_bytes_s
    from shared.engine import Engine
    path = request.getfixturevalue("smollm2") if model == "smollm2" else models.resolve("llama-1b")
    fp16 = Engine(str(path), track=track, dtype="fp16")
    assert fp16.use_graphs, "the bench compares graph-replayed decode: the track needs day 23"
    result = {"model": model, "gpu": torch.cuda.get_device_name(), "track": track, "prompt": 512, "new_tokens": 64,
              "fp16_tok_s": decode_rate(fp16), "fp16_gpu_ms": gpu_ms_per_token(fp16, 512, max_len=576)}
    c = fp16.config
    del fp16
    torch.cuda.empty_cache()
    q = int8_engine(day, path, track)
    result.update(w8a16_tok_s=decode_rate(q), w8a16_gpu_ms=gpu_ms_per_token(q, 512, max_len=576))
    result["speedup"] = result["w8a16_tok_s"] / result["fp16_tok_s"]
    result["gpu_speedup"] = result["fp16_gpu_ms"] / result["w8a16_gpu_ms"]
    peak = peak_bandwidth_bytes_s()
    for name, quant in (("fp16", None), ("w8a16", "w8a16")):
        total = sum(day.decode_bytes(c, quant, context=544).values())
        result[f"{name}_MB_per_token"] = total / 1e6
        result[f"{name}_roofline_pct"] = 100 * total * result[f"{name}_tok_s"] / peak if peak else None
    result["ideal_speedup"] = result["fp16_MB_per_token"] / result["w8a16_MB_per_token"]
    result.update(floor=MIN_SPEEDUP, goal=GOAL_SPEEDUP, goal_met=result["speedup"] >= GOAL_SPEEDUP)
    record_bench(f"day_42_w8a16_vs_fp16_{model.replace('-', '_')}", result)
    assert result["w8a16_tok_s"] > 0 and math.isfinite(result["w8a16_tok_s"]), f"no int8 decode rate: {result}"
    if model == "llama-1b":
        assert result["speedup"] >= MIN_SPEEDUP, (
            f"w8a16 decodes {result['speedup']:.2f}x as fast as fp16 on the 1B shape (floor {MIN_SPEEDUP}, goal "
            f"{GOAL_SPEEDUP}; bytes alone allow {result['ideal_speedup']:.2f}x) -- see the lesson's 'What to measure'")


@pytest.mark.gpu
@pytest.mark.model
def test_greedy_agreement_fp16_vs_w8a16_smollm2(day, track, smollm2):
    """SmolLM2-135M, 8 prompts x 32 greedy tokens: how long the w8a16 engine (lm_head int8, and kept)
    follows the fp16 engine's tokens, recorded for the lesson. A 135M model is sensitive to int8
    weights, so this is a report; it fails only if the first token differs on most prompts."""
    from shared.engine import Engine
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a",
               "The three laws of thermodynamics are", "Water boils at", "In 1863, Abraham Lincoln",
               "The quick brown fox", "To make a cup of tea, first"]
    fp16 = Engine(str(smollm2), track=track, dtype="fp16")
    base = {p: list(fp16.generate_ids(fp16.prompt_ids(p), max_new_tokens=32, ignore_eos=True)) for p in prompts}
    result = {"model": "SmolLM2-135M-Instruct", "gpu": torch.cuda.get_device_name(), "tokens": 32, "prompts": prompts}
    for head in (True, False):
        q = int8_engine(day, smollm2, track, head=head)
        same = [next((i for i, (a, b) in enumerate(zip(base[p], q.generate_ids(q.prompt_ids(p), max_new_tokens=32,
                                                                              ignore_eos=True))) if a != b), 32)
                for p in prompts]
        key = "head_int8" if head else "head_fp16"
        result[f"{key}_first_divergence"] = same
        result[f"{key}_mean_tokens_equal"] = sum(same) / len(same)
    record_bench("day_42_greedy_agreement_smollm2", result)
    assert sum(1 for s in result["head_int8_first_divergence"] if s > 0) >= len(prompts) // 2, \
        f"the int8 engine's first token differs from fp16's on most prompts: {result}"


@pytest.mark.gpu
def test_engine_graphs_equal_eager_with_int8_weights(day, track, tiny_model):
    """The quantized engine with graphs and without: the same greedy tokens (day 23's rule)."""
    graphed, eager = int8_engine(day, tiny_model, track), int8_engine(day, tiny_model, track, graphs=False)
    ids = graphed.prompt_ids("graph == eager")
    assert graphed.use_graphs, "the track has no CUDA graphs: nothing to compare"
    assert list(graphed.generate_ids(ids, max_new_tokens=24)) == list(eager.generate_ids(ids, max_new_tokens=24))
