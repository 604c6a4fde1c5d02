"""Day 54 checker: add_rmsnorm (residual add + RMSNorm in one kernel), norm_linear and linear_add
(the norm and the add inside the decode GEMV) and the fused forward.
Run: pytest checkers/day_54"""
import collections
import dataclasses

import pytest
import torch

from shared import reference
from shared.course.registry import Ops
from shared.course.testing import assert_close, no_host_reads, randn, record_bench, tol
from shared.weights import fuse_projections

DTYPES = [torch.float32, torch.float16]
TINY_TOL = dict(atol=1e-4, rtol=1e-4)


# ---- add_rmsnorm ---------------------------------------------------------------------------------
def hf_rmsnorm(x, weight, eps):
    """transformers' own LlamaRMSNorm with our weight and eps (on the CPU)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    norm = LlamaRMSNorm(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight.cpu())
        return norm(x.cpu())


def residual_case(rows, hidden, dtype, device, seed=0):
    """(h, x, weight): rows at scales 1, 1e-4 (eps matters), 100, ...; x about as large as h;
    a weight that is not ones (a kernel that forgets it must fail)."""
    scales = torch.tensor([1.0, 1e-4, 100.0, 0.5, 3e-3])[torch.arange(rows) % 5][:, None]
    h = (randn(rows, hidden, seed=seed) * scales).to(dtype=dtype, device=device)
    x = (randn(rows, hidden, seed=seed + 1) * scales).to(dtype=dtype, device=device)
    w = (1.0 + 0.5 * randn(hidden, seed=seed + 2)).to(dtype=dtype, device=device)
    return h, x, w


def check_add_rmsnorm(day, h, x, w, eps, what, **kw):
    """Call day.add_rmsnorm and check both effects: h == h + x (in h's dtype, bit for bit: one
    rounding of the fp32 sum, as torch's add) and the result == HF's RMSNorm of that new h."""
    want_h = h + x                       # torch adds in h's dtype: HF's residual add
    want = hf_rmsnorm(want_h, w, eps)
    out = day.add_rmsnorm(h, x, w, eps, **kw)
    assert isinstance(out, torch.Tensor) and out.dtype == h.dtype, \
        f"{what}: add_rmsnorm must return a tensor of h's dtype {h.dtype}"
    assert out.data_ptr() != h.data_ptr(), f"{what}: return the norm in a new tensor; h keeps the residual stream"
    differ = (h.cpu() != want_h.cpu()).sum().item()
    assert not differ, (f"{what}: h was not updated in place to h + x ({differ} of {h.numel()} elements differ) -- "
                        "the kernel must store the sum into h itself, not into a copy")
    assert_close(out, want, f"{what}: rmsnorm of h + x", **tol(h.dtype))
    return out


@pytest.fixture(scope="module")
def eps(tiny_model):
    return reference.load_config(tiny_model).rms_norm_eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [50, 97])
def test_add_then_rmsnorm_matches_hf(day, device, sizes, dtype, hidden, eps):
    """Odd hidden sizes, not multiples of the block; rows at scales where eps matters."""
    h, x, w = residual_case(sizes(tiny=3, real=257), hidden, dtype, device)
    check_add_rmsnorm(day, h, x, w, eps, f"add_rmsnorm hidden={hidden} {dtype}", block_size=32)


@pytest.mark.parametrize("block_size", [1, 64, 128])
def test_block_sizes(day, device, sizes, block_size):
    """More threads than columns (97 < 128), a block of one thread: idle threads add 0."""
    hidden = sizes(tiny=97, real=2049)
    h, x, w = residual_case(2, hidden, torch.float32, device, seed=block_size)
    check_add_rmsnorm(day, h, x, w, 1e-5, f"add_rmsnorm block_size={block_size}", block_size=block_size)


def test_barriers_in_the_block_reduction(day, device, sizes):
    """One column per thread, all the mass in the far half: a tree step that reads a partial sum
    before its owner wrote it (a missing cuda.syncthreads()) gives a wrong norm."""
    n = sizes(tiny=64, real=1024)
    h = torch.zeros(2, n)
    h[:, n // 2:] = 500.0 * (1 + torch.arange(n - n // 2))
    x = h.clone()
    w = (1.0 + 0.5 * randn(n, seed=3))
    check_add_rmsnorm(day, h.to(device), x.to(device), w.to(device), 1e-5,
                      f"add_rmsnorm with one column per thread (block_size={n})", block_size=n)


def test_fp16_norm_reads_the_rounded_sum_bit_for_bit(day, device, eps):
    """HF adds the residual in fp16 (one rounding), THEN normalizes the rounded value. Here
    |h| = k/8 in [2, 4) and x = 2^-11 of h's sign: h + x is not an fp16 number (its spacing there
    is 2^-9) and rounds back to h. Every sum of squares of the rounded values is exact in fp32, so the
    result must equal HF bit for bit; a norm of the fp32 sum before rounding is off by an fp16
    ulp in many elements."""
    g = torch.Generator().manual_seed(12)
    hidden = 200
    k = torch.randint(16, 32, (3, hidden), generator=g).float() / 8
    sign = torch.randint(0, 2, (3, hidden), generator=g).float() * 2 - 1
    h = (k * sign).to(dtype=torch.float16, device=device)
    x = (2.0 ** -11 * sign).to(dtype=torch.float16, device=device)   # same sign: every |h + x| grows
    w = (1.0 + 0.5 * randn(hidden, seed=13)).to(dtype=torch.float16, device=device)
    want = hf_rmsnorm(h + x, w, eps)
    out = day.add_rmsnorm(h, x, w, eps, block_size=64)
    differ = (out.cpu() != want).nonzero()
    assert not len(differ), (f"fp16 add_rmsnorm: {len(differ)} of {out.numel()} elements differ from HF bit for bit, "
                             f"first at {tuple(differ[0].tolist())} -- store h + x into h first (that rounds it to "
                             "fp16), then square and scale the stored value, float32(h[row, c]); round x * inv_rms "
                             "to fp16 before the weight, as on day 10")


def test_zero_sum_gives_zeros_not_nan(day, device):
    """h + x == 0: eps keeps the norm finite, the row comes out as zeros."""
    h = randn(2, 40, device=device, seed=4)
    out = day.add_rmsnorm(h, -h.clone(), torch.ones(40, device=device), 1e-5, block_size=32)
    assert_close(out, torch.zeros_like(out), "add_rmsnorm of a row that sums to zero (eps?)", atol=0, rtol=0)


def test_leading_dims_and_strided_h(day, device):
    """h [2, 3, hidden] updates all 6 rows in place; a 2-D h that is a column slice of a wider
    buffer is updated where it lives (the buffer's other columns untouched); x and the weight
    stay as they were."""
    h, x, w = (randn(2, 3, 24, device=device, seed=5), randn(2, 3, 24, device=device, seed=6),
               1.0 + 0.5 * randn(24, device=device, seed=7))
    x0, w0 = x.clone(), w.clone()
    check_add_rmsnorm(day, h, x, w, 1e-5, "add_rmsnorm of h [2, 3, 24]", block_size=32)
    assert torch.equal(x, x0) and torch.equal(w, w0), "add_rmsnorm must not modify x or the weight"
    buf = randn(3, 40, device=device, seed=8)
    rest = buf[:, 24:].clone()
    check_add_rmsnorm(day, buf[:, :24], randn(3, 24, device=device, seed=9), w, 1e-5,
                      "add_rmsnorm of h = buf[:, :24] (a strided view)", block_size=32)
    assert torch.equal(buf[:, 24:], rest), "add_rmsnorm wrote outside h"


@pytest.mark.parametrize("case", ["shapes differ", "weight too short", "dtypes differ", "block not a power of two"])
def test_bad_inputs_raise_value_error(day, device, case):
    h, x, w = torch.ones(2, 8, device=device), torch.ones(2, 8, device=device), torch.ones(8, device=device)
    kw = {}
    if case == "shapes differ":
        x = x[:1]
    elif case == "weight too short":
        w = w[:7]
    elif case == "dtypes differ":
        x = x.half()
    else:
        kw = dict(block_size=48)
    with pytest.raises(ValueError):
        day.add_rmsnorm(h, x, w, 1e-5, **kw)


# ---- norm_linear and linear_add: the norm and the add inside the decode GEMV -------------------
def gemv_case(T, K, N, dtype, device, seed=0):
    """(h, norm weight, w): rows of h at scales where eps matters and where it does not."""
    scales = torch.tensor([1.0, 1e-4, 100.0])[torch.arange(T) % 3][:, None]
    h = (randn(T, K, seed=seed) * scales).to(dtype=dtype, device=device)
    nw = (1.0 + 0.5 * randn(K, seed=seed + 1)).to(dtype=dtype, device=device)
    w = (0.2 * randn(N, K, seed=seed + 2)).to(dtype=dtype, device=device)
    return h, nw, w


def check_norm_linear(day, h, nw, w, eps, what, **kw):
    want = hf_rmsnorm(h, nw, eps).float() @ w.cpu().float().T
    out = day.norm_linear(h, nw, eps, w, **kw)
    assert isinstance(out, torch.Tensor) and out.shape == want.shape and out.dtype == h.dtype, \
        f"{what}: norm_linear must return [T, out] = {tuple(want.shape)} in h's dtype, got " \
        f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}"
    assert_close(out, want, f"{what}: rmsnorm(h) @ w.T", **tol(h.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,K,N,block_size", [(1, 64, 37, 32), (2, 45, 21, 64), (1, 80, 9, 128), (1, 300, 5, 64)])
def test_norm_linear_matches_hf(day, device, dtype, T, K, N, block_size, eps):
    """K a multiple of 8 (16-byte loads) and not (the tail), more rows than blocks x warps (every
    block loops over several groups of rows), several tokens, more warps than rows, and a row
    whose chunks reach the second warp (K = 300: the sum of squares needs every warp's share)."""
    h, nw, w = gemv_case(T, K, N, dtype, device, seed=K + N)
    check_norm_linear(day, h, nw, w, eps, f"norm_linear T={T} K={K} N={N} {dtype} block_size={block_size}",
                      block_size=block_size)


def test_norm_linear_misaligned_views(day, device, eps):
    """h and w that are views 2 bytes off a 16-byte boundary: the kernel must not take 16-byte loads."""
    hb, nw, wb = gemv_case(1, 65, 13, torch.float16, device, seed=5)
    h, w = hb[:, 1:], wb[:, 1:]
    check_norm_linear(day, h, nw[1:].contiguous(), w, eps, "norm_linear of views 2 bytes off alignment",
                      block_size=64)


def test_norm_linear_with_identity_is_hf_rmsnorm_bit_for_bit(day, device, eps):
    """w = I: each output is one product x[n] * 1 plus zeros, so the result IS the normalized row.
    With |h| = k/8 in [2, 4) every sum of squares is exact in fp32, so the fp16 result must equal
    HF's RMSNorm bit for bit: one sum over the whole row (every warp's share), h * inv_rms rounded
    to fp16, then times the weight."""
    K = 72
    g = torch.Generator().manual_seed(22)
    k = torch.randint(16, 32, (3, K), generator=g).float() / 8
    h = (k * (torch.randint(0, 2, (3, K), generator=g).float() * 2 - 1)).to(dtype=torch.float16, device=device)
    nw = (1.0 + 0.5 * randn(K, seed=23)).to(dtype=torch.float16, device=device)
    want = hf_rmsnorm(h, nw, eps)
    out = day.norm_linear(h, nw, eps, torch.eye(K, dtype=torch.float16, device=device), block_size=64)
    differ = (out.cpu() != want).nonzero()
    assert not len(differ), (f"fp16 norm_linear with w = I: {len(differ)} of {out.numel()} values differ from "
                             f"HF's RMSNorm, first at {tuple(differ[0].tolist())} -- one sum of squares over the whole "
                             "row, h * inv_rms rounded to fp16, then times the weight (day 10's recipe)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,K,F,block_size", [(1, 64, 19, 32), (2, 45, 7, 64), (1, 264, 3, 64)])
def test_gated_norm_linear_is_the_swiglu(day, device, dtype, T, K, F, block_size, eps):
    """gated=True: w = [gate; up] (2F rows) and the result [T, F] is silu(gate) * up of the two
    halves of rmsnorm(h) @ w.T -- gate first; more features than blocks x warps; rows long enough
    (K = 264: 33 chunks of 8) that lane 0 takes two chunks in one step and the others one alone."""
    h, nw, w = gemv_case(T, K, 2 * F, dtype, device, seed=K + F)
    y = hf_rmsnorm(h, nw, eps).float() @ w.cpu().float().T
    want = torch.nn.functional.silu(y[:, :F]) * y[:, F:]
    out = day.norm_linear(h, nw, eps, w, gated=True, block_size=block_size)
    assert isinstance(out, torch.Tensor) and out.shape == (T, F) and out.dtype == dtype, \
        f"gated norm_linear must return [T, F] = [{T}, {F}] in h's dtype, got {getattr(out, 'shape', None)}"
    assert_close(out, want, f"gated norm_linear T={T} K={K} F={F} {dtype}: silu(gate) * up", **tol(dtype))


def test_gated_rounds_gate_and_up_like_the_unfused_step(day, device, eps):
    """fp16: the unfused step stores gate and up in fp16 (the GEMV's output), then silu_mul
    computes in fp32 and rounds once. w = [diag(a); diag(b)] makes gate = a * x and up = b * x
    exact in fp32 but not fp16 numbers, so only the roundings differ: skipping the round of gate
    or up before the SwiGLU moves a good share of the results by an ulp; exp's last bit almost none."""
    K = 64
    g = torch.Generator().manual_seed(41)
    h = torch.randn(3, K, generator=g).to(dtype=torch.float16, device=device)
    nw = (1.0 + 0.5 * torch.randn(K, generator=g)).to(dtype=torch.float16, device=device)
    a, b = ((0.5 + torch.rand(K, generator=g)).half().float() for _ in range(2))
    w = torch.cat([torch.diag(a), torch.diag(b)]).to(dtype=torch.float16, device=device)
    x = hf_rmsnorm(h, nw, eps).float()
    gate, up = (x * a).half(), (x * b).half()                       # the GEMV's outputs, stored in fp16
    want = reference.silu_mul(gate, up)
    out = day.norm_linear(h, nw, eps, w, gated=True, block_size=64).cpu()
    differ = (out != want).sum().item()
    assert differ <= out.numel() // 50, (
        f"gated fp16 norm_linear: {differ} of {out.numel()} values differ from silu_mul(gate, up) with gate and up "
        "rounded to fp16 first -- round the two sums to h's dtype, then silu(gate) * up in fp32, one rounding")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,rotated,hd,K,block_size", [(5, 3, 8, 40, 32), (4, 3, 16, 64, 64), (2, 1, 8, 264, 32)])
def test_rope_norm_linear_rotates_q_and_k_heads(day, device, dtype, heads, rotated, hd, K, block_size, eps):
    """rope=(positions, inv_freq, rotated): w is `heads` heads of hd rows (q, k, then v); the first
    `rotated` heads come out as day 12's rope would rotate them (element i with i + hd/2), the
    rest untouched. Two tokens at different positions, one of them large (the angle's range)."""
    T = 2
    h, nw, w = gemv_case(T, K, heads * hd, dtype, device, seed=heads * hd + K)
    positions = torch.tensor([3, 4099], dtype=torch.int32, device=device)
    inv_freq = (1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd)).to(device)
    want = (hf_rmsnorm(h, nw, eps).float() @ w.cpu().float().T).to(dtype)        # the GEMV's stored output
    qk = want[:, :rotated * hd].view(T, rotated, hd)
    reference.rope(qk, qk[:, :0], positions.cpu(), inv_freq.cpu())
    out = day.norm_linear(h, nw, eps, w, rope=(positions, inv_freq, rotated), block_size=block_size)
    assert isinstance(out, torch.Tensor) and out.shape == (T, heads * hd) and out.dtype == dtype, \
        f"norm_linear(rope=...) must return [T, rows] = [{T}, {heads * hd}], got {getattr(out, 'shape', None)}"
    assert_close(out[:, rotated * hd:], want[:, rotated * hd:], f"rope epilogue {dtype}: the v heads, not rotated",
                 **tol(dtype))
    assert_close(out, want, f"rope epilogue {dtype}: the first {rotated} heads rotated by their positions",
                 **tol(dtype, 4))


def double_rounding_case(T, K, dtype, device, seed, rows=None):
    """x, w, h where each product x @ w.T = x[n] + x[n + 1] / 4096 is exact in fp32 but not an fp16
    number: rounding it to fp16 before the residual add (as HF's o_proj output) can differ from
    adding the fp32 sum, so only the right order matches bit for bit. rows: the first rows of w
    only (w [rows, K], h [T, rows]; default K)."""
    rows = K if rows is None else rows
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=g).to(dtype)
    w = torch.eye(K)
    w[torch.arange(K - 1), torch.arange(1, K)] = 2.0 ** -12
    w = w[:rows]
    h = torch.randn(T, rows, generator=g).to(dtype)
    prod = (x.float() @ w.T).to(dtype)                 # exact in fp32, then HF's rounding
    want = (h.float() + prod.float()).to(dtype)        # the residual add in the model dtype
    return x.to(device), w.to(dtype=dtype, device=device), h.to(device), want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,rows,block_size,warps_per_row", [(64, 64, 32, None), (45, 45, 64, 2), (96, 24, 128, 4)])
def test_linear_add_rounds_like_hf_bit_for_bit(day, device, dtype, K, rows, block_size, warps_per_row):
    """h += x @ w.T in place: the product rounded to h's dtype, then added and rounded again.
    (Rows split over 4 warps: 24 rows, so the simulator runs 24 blocks of 128 threads, not 96.)"""
    x, w, h, want = double_rounding_case(2, K, dtype, device, seed=K, rows=rows)
    hp = h.data_ptr()
    ret = day.linear_add(x, w, h, block_size=block_size, warps_per_row=warps_per_row)
    assert ret is None and h.data_ptr() == hp, "linear_add updates h in place and returns None"
    differ = (h.cpu() != want).nonzero()
    assert not len(differ), (f"linear_add K={K} {dtype}: {len(differ)} of {h.numel()} values differ from "
                             f"h + (x @ w.T in {dtype}), first at {tuple(differ[0].tolist())} -- round the row's "
                             "sum to h's dtype, then add h[t, n] (two roundings, as HF)")


def test_linear_add_random_and_leaves_inputs(day, device):
    """Random x, w; h [T, out] updated, x and w untouched, more rows than one block."""
    x, w = randn(3, 50, device=device, seed=31), 0.2 * randn(41, 50, device=device, seed=32)
    h = randn(3, 41, device=device, seed=33)
    want = h.cpu() + x.cpu() @ w.cpu().T
    x0, w0 = x.clone(), w.clone()
    day.linear_add(x, w, h, block_size=64)
    assert_close(h, want, "linear_add: h + x @ w.T", **tol(torch.float32))
    assert torch.equal(x, x0) and torch.equal(w, w0), "linear_add must not modify x or w"


BAD_FUSED = {
    "norm_linear: in differs": lambda d, x, w, h, nw: d.norm_linear(x, nw, 1e-5, w[:, :7]),
    "norm_linear: dtypes differ": lambda d, x, w, h, nw: d.norm_linear(x, nw, 1e-5, w.half()),
    "norm_linear: norm weight too short": lambda d, x, w, h, nw: d.norm_linear(x, nw[:7], 1e-5, w),
    "norm_linear: block not a power of two": lambda d, x, w, h, nw: d.norm_linear(x, nw, 1e-5, w, block_size=48),
    "norm_linear: gated with an odd w": lambda d, x, w, h, nw: d.norm_linear(x, nw, 1e-5, w[:3], gated=True),
    "norm_linear: rope and gated": lambda d, x, w, h, nw: d.norm_linear(
        x, nw, 1e-5, w, gated=True, rope=(torch.zeros(1, dtype=torch.int32, device=x.device), nw[:2], 1)),
    "norm_linear: rope heads past w": lambda d, x, w, h, nw: d.norm_linear(
        x, nw, 1e-5, w, rope=(torch.zeros(1, dtype=torch.int32, device=x.device), nw[:2], 2)),
    "norm_linear: rope positions not int32": lambda d, x, w, h, nw: d.norm_linear(
        x, nw, 1e-5, w, rope=(torch.zeros(1, device=x.device), nw[:2], 1)),
    "linear_add: h shape": lambda d, x, w, h, nw: d.linear_add(x, w, h[:, :3]),
    "linear_add: dtypes differ": lambda d, x, w, h, nw: d.linear_add(x, w, h.half()),
    "linear_add: strided h": lambda d, x, w, h, nw: d.linear_add(x, w, torch.ones_like(h.repeat(1, 2))[:, ::2]),
    "linear_add: warps_per_row": lambda d, x, w, h, nw: d.linear_add(x, w, h, block_size=64, warps_per_row=3),
}


def test_linear_add_long_rows_each_token_its_own_x(day, device):
    """Rows long enough that each lane takes several 8-value steps (two loads in flight), three
    tokens with different x: token t's row of h gets x[t] @ w.T, whichever loop a value went through."""
    x, w = randn(3, 520, device=device, seed=34), 0.1 * randn(6, 520, device=device, seed=35)
    h = randn(3, 6, device=device, seed=36)
    want = h.cpu() + x.cpu() @ w.cpu().T
    day.linear_add(x, w, h, block_size=32)
    assert_close(h, want, "linear_add with 520-long rows and 3 tokens", **tol(torch.float32))


def test_quantized_weights_go_to_the_previous_day(day, track, device):
    """A QuantWeight (int8, --quant w8a16) is not this day's business: norm_linear and linear_add hand
    it on, with the epilogue options, to the previous day that provides them (day 42's int8 kernels,
    else the reference), bit for bit."""
    from shared.course import registry
    from shared.quant import QuantWeight
    q = reference.quantize_int8(0.2 * randn(6, 32, seed=51))
    qw = QuantWeight(q.q.to(device), q.scale.to(device), None, q.group_size, q.scheme, q.granularity, q.dtype)
    h, nw = randn(1, 32, seed=52, device=device), 1.0 + 0.5 * randn(32, seed=53, device=device)
    previous = registry.resolve_before("norm_linear", track, 54)
    got, want = day.norm_linear(h, nw, 1e-5, qw, gated=True), previous(h, nw, 1e-5, qw, gated=True)
    assert isinstance(got, torch.Tensor) and torch.equal(got, want), \
        f"norm_linear(h, QuantWeight, gated=True) must be {previous.__module__}.norm_linear's output exactly"
    x = randn(1, 32, seed=54, device=device)
    mine = randn(1, 6, seed=55, device=device)
    theirs = mine.clone()
    day.linear_add(x, qw, mine)
    registry.resolve_before("linear_add", track, 54)(x, qw, theirs)
    assert torch.equal(mine, theirs), "linear_add(x, QuantWeight, h) must be the previous linear_add's update exactly"


@pytest.mark.parametrize("case", list(BAD_FUSED))
def test_fused_gemv_bad_inputs_raise_value_error(day, device, case):
    x, w, h, nw = (torch.ones(1, 8, device=device), torch.ones(4, 8, device=device),
                   torch.ones(1, 4, device=device), torch.ones(8, device=device))
    with pytest.raises(ValueError):
        BAD_FUSED[case](day, x, w, h, nw)


# ---- fuse_projections (given in shared/weights.py) -----------------------------------------------
def load_tiny(tiny_model, device, dtype=torch.float32, fuse=True):
    w = reference.load_model(tiny_model, dtype=dtype, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return fuse_projections(w) if fuse else w


def test_fuse_projections_makes_views_and_is_idempotent(tiny_model, device):
    """wqkv = [wq; wk; wv] and w_gate_up = [w_gate; w_up] with the parts as row-slice views of them
    (one storage, nothing copied twice); a second call changes nothing; replacing wk re-fuses."""
    plain = load_tiny(tiny_model, device, fuse=False)
    before = [{n: getattr(L, n).clone() for n in ("wq", "wk", "wv", "w_gate", "w_up")} for L in plain.layers]
    w = fuse_projections(plain)
    c = w.config
    assert w is plain and w.fused
    for L, old in zip(w.layers, before):
        assert L.wqkv.shape == ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.hidden_size)
        assert L.w_gate_up.shape == (2 * c.intermediate_size, c.hidden_size)
        for whole, names in ((L.wqkv, ("wq", "wk", "wv")), (L.w_gate_up, ("w_gate", "w_up"))):
            row = 0
            for n in names:
                part = getattr(L, n)
                assert torch.equal(part, old[n]), f"{n} changed value when fused"
                assert part.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr(), f"{n} is a copy"
                assert part.data_ptr() == whole[row].data_ptr() and part.is_contiguous(), f"{n} is not rows {row}.."
                row += part.shape[0]
    first = [(L.wqkv, L.w_gate_up) for L in w.layers]
    fuse_projections(w)
    assert all(L.wqkv is a and L.w_gate_up is b for L, (a, b) in zip(w.layers, first)), "fusing twice re-copied"
    L = w.layers[1]
    L.wk = torch.ones_like(L.wk)
    fuse_projections(w)
    assert L.wqkv is not first[1][0] and torch.equal(L.wqkv[c.num_heads * c.head_dim:][:L.wk.shape[0]], L.wk), \
        "a replaced wk must be fused again"


# ---- the fused forward ---------------------------------------------------------------------------
def positions(start, n, device):
    return torch.arange(start, start + n, dtype=torch.int32, device=device)


def tiny_ids(vocab, device, T=8):
    return torch.randint(3, vocab, (T,), generator=torch.Generator().manual_seed(0), dtype=torch.int32).to(device)


@pytest.fixture(scope="module")
def day_ops(day, ops, sizes):
    """Your add_rmsnorm (and on a GPU your norm_linear and linear_add), whatever their status, so
    the fused forward runs them end to end. On a GPU
    every other component from the track. In the simulator the track's rope, silu_mul and
    kv_write (they take the views of the fused outputs) and reference GEMVs and attention (a
    simulated GEMV of every weight takes minutes)."""
    table = sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})
    if sizes.sim:
        table.update(rope=ops.rope, silu_mul=ops.silu_mul, kv_write=ops.kv_write)
    table["add_rmsnorm"] = day.add_rmsnorm
    if not sizes.sim:                    # simulated, they are the GEMVs of every weight again
        table.update(norm_linear=day.norm_linear, linear_add=day.linear_add)
    return Ops(ops.track, overrides=table)


@pytest.fixture(scope="module")
def reference_ops(track):
    """Every component from the PyTorch reference (fast in the simulator)."""
    return Ops(track, overrides={n: getattr(reference, n) for n in reference.__all__})


@pytest.fixture(scope="module")
def tiny(tiny_model, device, reference_ops):
    """Fused fp32 tiny weights (GQA 4/2), 8 ids, and day 16's logits (the reference composition)."""
    w = load_tiny(tiny_model, device)
    ids = tiny_ids(w.config.vocab_size, device)
    return w, ids, reference.forward(w, ids, positions(0, len(ids), device), reference_ops)


def test_fused_forward_equals_day_16(day, day_ops, device, tiny):
    """End to end through your add_rmsnorm and the track's kernels (see day_ops): the same logits
    as day 16's forward, fp32, default attention."""
    w, ids, expected = tiny
    logits = day.forward(w, ids, positions(0, len(ids), device), day_ops)
    assert logits.dtype == torch.float32, f"forward must return fp32 logits, got {logits.dtype}"
    assert_close(logits, expected, "fused forward vs day 16's forward (tiny model, fp32)", **TINY_TOL)


def _static_cache(ops, config, device, max_len=16):
    from shared.engine.attention import StaticCache
    return StaticCache(ops, config, max_len, torch.float32, device)


def test_prefill_then_decode_with_a_static_cache(day, day_ops, device, tiny):
    """Prefill 5 tokens into the engine's static cache, then decode 3 one at a time (decode
    attention over the cache, cache_len on the device), every step with host reads made to
    raise: each step's logits equal day 16's for the whole sequence."""
    w, ids, expected = tiny
    cache = _static_cache(day_ops, w.config, device)
    cache.prepare(0, 5)
    got = [day.forward(w, ids[:5], positions(0, 5, device), day_ops, cache, logits_at=slice(-1, None))]
    for t in range(5, len(ids)):
        cache.prepare(t, 1)
        with no_host_reads():
            got.append(day.forward(w, ids[t:t + 1], positions(t, 1, device), day_ops, cache))
    assert_close(torch.cat(got), expected[4:], "logits of prefill (last row) then 3 decode steps vs day 16", **TINY_TOL)


@pytest.mark.parametrize("pick", ["last", "index"])
def test_logits_at_and_fp16(day, reference_ops, device, tiny_model, tiny, pick):
    """logits_at picks rows after the fused final norm; fp16 weights still give fp32 logits."""
    w, ids, expected = tiny
    at, rows = {"last": (slice(-1, None), [7]), "index": (torch.tensor([6, 0, 3], device=device), [6, 0, 3])}[pick]
    logits = day.forward(w, ids, positions(0, len(ids), device), reference_ops, logits_at=at)
    assert_close(logits, expected[rows], f"forward(..., logits_at={pick}) vs rows {rows} of day 16's logits", **TINY_TOL)
    w16 = load_tiny(tiny_model, device, dtype=torch.float16)
    logits16 = day.forward(w16, ids, positions(0, len(ids), device), reference_ops, logits_at=at)
    assert logits16.dtype == torch.float32, f"fp16 weights: forward must still return fp32 logits, got {logits16.dtype}"
    assert_close(logits16, expected[rows], "fp16 fused forward vs fp32 day 16", atol=0.05, rtol=0.05)


class Counting:
    """ops whose calls are counted (by name; ops.linear by which weight it multiplies; the calls a
    composite like ops.mlp makes through these ops too), and `attend` wrapped the same way.
    Torch arithmetic the forward itself does, outside any op, is counted too: each one is a
    kernel launch of its own."""
    ARITH = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "__sub__", "mul", "__mul__", "__imul__",
             "cat", "clone", "contiguous", "copy_", "where"}

    def __init__(self, ops, weights):
        self.ops, self.calls, self.depth = ops, collections.Counter(), 0
        self.names = {}
        for L in weights.layers:
            for f in dataclasses.fields(L):
                t = getattr(L, f.name)
                if t is not None:
                    self.names.setdefault(id(t), f.name)
        self.names[id(weights.lm_head)] = "lm_head"
        self.torch_ops = collections.Counter()

    def __getattr__(self, name):
        fn = getattr(self.ops, name)
        if not callable(fn) or name in ("rope_frequencies",):
            return fn
        return self.wrap(name, fn)

    def wrap(self, name, fn):
        def call(*args, **kw):
            weight = {"linear": 1, "linear_add": 1, "norm_linear": 3}.get(name)
            label = name if weight is None else f"{name}({self.names.get(id(args[weight]), '?')})"
            self.calls[label + (", gated" if kw.get("gated") else "") + (", rope" if kw.get("rope") else "")] += 1
            self.depth += 1
            try:
                return fn(*args, **kw)
            finally:
                self.depth -= 1
        return call

    def run(self, forward, weights, ids, pos, attend):
        counter = self

        class Mode(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if counter.depth == 0 and getattr(func, "__name__", "") in Counting.ARITH:
                    counter.torch_ops[func.__name__] += 1
                return func(*args, **(kwargs or {}))

        with Mode():
            return forward(weights, ids, pos, self, self.wrap("attend", attend))


def counted_step(fwd, w, ids, device, T, reference_ops):
    """Counting ops of one forward of T tokens after 5 cached ones (T == 1: a decode step)."""
    cache = _static_cache(reference_ops, w.config, device)
    cache.prepare(0, 5)
    fwd(w, ids[:5], positions(0, 5, device), reference_ops, cache)
    cache.prepare(5, T)
    c = Counting(reference_ops, w)
    c.run(fwd, w, ids[5:5 + T], positions(5, T, device), cache)
    return c


def launches(c):
    """Every kernel-level call and torch op; ops.mlp is made of counted calls."""
    return sum(n for k, n in c.calls.items() if k != "mlp") + sum(c.torch_ops.values())


def test_fewer_launches_per_decode_step(day, reference_ops, device, tiny):
    """One decode step (T == 1): per layer ops.norm_linear for wqkv (with rope) and w_gate_up
    (gated) and ops.linear_add for wo and w_down, the final norm inside norm_linear(lm_head); no
    rmsnorm, add_rmsnorm, rope, silu_mul or plain linear, no torch arithmetic of the forward's
    own; fewer calls in all than day 16's forward."""
    w, ids, _ = tiny
    nl = len(w.layers)
    fused = counted_step(day.forward, w, ids, device, 1, reference_ops)
    want = collections.Counter({"norm_linear(wqkv), rope": nl, "linear_add(wo)": nl, "norm_linear(w_gate_up), gated": nl,
                                "linear_add(w_down)": nl, "norm_linear(lm_head)": 1})
    got = collections.Counter({k: v for k, v in fused.calls.items() if k.startswith(("linear", "norm_linear"))})
    assert got == want, f"GEMV calls of a decode step {dict(got)}; a fused step makes {dict(want)}"
    assert not fused.calls["rmsnorm"] and not fused.calls["add_rmsnorm"], (
        f"a decode step calls rmsnorm {fused.calls['rmsnorm']}x and add_rmsnorm {fused.calls['add_rmsnorm']}x: "
        "at T == 1 every norm is norm_linear's prologue and every residual add linear_add's epilogue")
    assert fused.calls["attend"] == nl and not fused.calls["rope"] and not fused.calls["silu_mul"], (
        f"{dict(fused.calls)}: per layer one attend; RoPE and the SwiGLU are norm_linear's epilogues (rope=, gated=)")
    assert not fused.torch_ops, f"torch arithmetic outside the ops (a launch each): {dict(fused.torch_ops)}"
    before, after = launches(counted_step(reference.forward, w, ids, device, 1, reference_ops)), launches(fused)
    assert after < before, f"day 54 makes {after} calls per decode step, day 16 {before}"


def test_prefill_fuses_each_add_with_its_norm(day, reference_ops, device, tiny):
    """Three tokens on top of the cache (T > 1): per layer ops.linear multiplies wqkv, wo,
    w_gate_up, w_down (4, not 7); a plain rmsnorm only before layer 0's attention, every residual
    add an add_rmsnorm (the last with the final norm); no torch arithmetic of its own."""
    w, ids, _ = tiny
    nl = len(w.layers)
    fused = counted_step(day.forward, w, ids, device, 3, reference_ops)
    want = collections.Counter({"linear(wqkv)": nl, "linear(wo)": nl, "linear(w_gate_up)": nl, "linear(w_down)": nl,
                                "linear(lm_head)": 1})
    got = collections.Counter({k: v for k, v in fused.calls.items() if k.startswith(("linear", "norm_linear"))})
    assert got == want, f"GEMM calls {dict(got)}; a fused layer multiplies {dict(want)}"
    assert fused.calls["rmsnorm"] == 1 and fused.calls["add_rmsnorm"] == 2 * nl, (
        f"{fused.calls['rmsnorm']} rmsnorm and {fused.calls['add_rmsnorm']} add_rmsnorm calls for {nl} layers: "
        f"expected 1 and {2 * nl} (every residual add fused with the norm after it, the last with the final norm)")
    assert not fused.torch_ops, f"torch arithmetic outside the ops (a launch each): {dict(fused.torch_ops)}"
    before = launches(counted_step(reference.forward, w, ids, device, 3, reference_ops))
    assert launches(fused) < before, f"day 54 makes {launches(fused)} calls per 3-token step, day 16 {before}"


def test_unfused_weights_and_bad_inputs_raise_value_error(day, reference_ops, device, tiny_model, tiny):
    w, ids, _ = tiny
    plain = load_tiny(tiny_model, device, fuse=False)
    with pytest.raises(ValueError, match="fuse_projections"):
        day.forward(plain, ids, positions(0, len(ids), device), reference_ops)
    with pytest.raises(ValueError):
        day.forward(w, ids, positions(0, len(ids) - 1, device), reference_ops)


# ---- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [576, 2048])
@pytest.mark.parametrize("block_size", [128, 256, 1024])
def test_real_shapes_fp16(day, device, hidden, block_size):
    """A 4096-token prefill at SmolLM2 (576) and Llama-3.2-1B (2048) widths."""
    h, x, w = residual_case(4096, hidden, torch.float16, device, seed=9)
    check_add_rmsnorm(day, h, x, w, 1e-5, f"add_rmsnorm 4096 x {hidden} fp16 block_size={block_size}",
                      block_size=block_size)


def smollm2_shaped(dtype, device, seed=0):
    """Random weights of SmolLM2-135M's shapes (30 layers, hidden 576, 9/3 heads of 64, inter
    1536, vocab 49152, tied): a decode step's launches and bytes are those of the real model."""
    from shared.config import ModelConfig
    from shared.weights import LayerWeights, ModelWeights
    c = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                    max_position_embeddings=8192, tie_word_embeddings=True)
    g = torch.Generator(device=device).manual_seed(seed)
    D, F, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, device=device) * std).to(dtype)

    def norm():
        return (1 + 0.1 * torch.randn(D, generator=g, device=device)).to(dtype)

    layers = [LayerWeights(attn_norm=norm(), wq=rand(q, D), wk=rand(kv, D), wv=rand(kv, D), wo=rand(D, q),
                           mlp_norm=norm(), w_gate=rand(F, D), w_up=rand(F, D), w_down=rand(D, F))
              for _ in range(c.num_layers)]
    embed = rand(c.vocab_size, D)
    w = ModelWeights(c, embed, layers, norm(), embed)
    w.inv_freq = reference.rope_frequencies(c).to(device)
    return fuse_projections(w)


def _kernels_in(step) -> int:
    """GPU kernels one call of step() runs, as the profiler (CUPTI) sees them: numba's and torch's."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset")))


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_fused_decode_step(day, day_ops, track, device):
    """One decode token on SmolLM2's shapes (fp16, static cache, 70 cached tokens), day 16's forward
    vs the fused one with the same kernels, in one run: kernels per step (profiler), launches
    through gpu.launch, and GPU us per step replayed from a CUDA graph. Fused must be fewer and faster."""
    from shared.course.testing import graph_us
    from shared.engine.attention import StaticCache
    from shared.runtime import gpu
    w = smollm2_shaped(torch.float16, device)
    context = 70
    result = {"model": "SmolLM2-135M shape, random weights", "dtype": "fp16", "context": context,
              "gpu": torch.cuda.get_device_name(), "track": track,
              **{f"{n}_from": day_ops.source(n).describe(track) for n in ("linear", "rmsnorm", "decode_attention")}}
    for name, fwd in (("day16", reference.forward), ("fused", day.forward)):
        cache = StaticCache(day_ops, w.config, 1024, torch.float16, device)
        ids = torch.full((1,), 17, dtype=torch.int32, device=device)
        pos = torch.full((1,), context, dtype=torch.int32, device=device)
        cache.prepare(context, 1)

        def step():
            with torch.inference_mode():
                return fwd(w, ids, pos, day_ops, cache)

        step()
        torch.cuda.synchronize()
        before = gpu.LAUNCHES
        step()
        result[f"{name}_gpu_launches"] = gpu.LAUNCHES - before
        result[f"{name}_kernels"] = _kernels_in(step)
        result[f"{name}_us"] = graph_us(step)
    result["speedup"] = result["day16_us"] / result["fused_us"]
    record_bench("day_54_fused_decode_step", result)
    assert result["fused_kernels"] > 0, "the profiler saw no kernels: is CUPTI available?"
    assert result["fused_kernels"] < result["day16_kernels"], f"fused step runs more kernels: {result}"
    assert result["fused_us"] < result["day16_us"], f"fused step is not faster: {result}"


@pytest.mark.gpu
@pytest.mark.model
def test_smollm2_fused_matches_day_16(day, day_ops, device, smollm2):
    """SmolLM2-135M in fp16: the fused forward's logits are close to day 16's, same greedy token."""
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(str(smollm2 / "tokenizer.json")).encode(
        "The capital of France is Paris. The capital of Germany is").ids
    ids = torch.tensor(ids, dtype=torch.int32, device=device)
    w = day_ops.load_model(smollm2, torch.float16, device)
    w.inv_freq = day_ops.rope_frequencies(w.config).to(device)
    fuse_projections(w)
    pos = positions(0, len(ids), device)
    want = reference.forward(w, ids, pos, day_ops)
    got = day.forward(w, ids, pos, day_ops)
    assert_close(got, want, "SmolLM2 fp16: fused forward vs day 16's", atol=0.25, rtol=0.05)
    assert int(got[-1].argmax()) == int(want[-1].argmax()), "greedy next token differs from day 16's"
