"""Day 40 checker: quantize_int8 -- int8 values, scales and zero points. Run: pytest checkers/day_40

Three kinds of evidence:
- rows worked out by hand below (the rounding ties, the clamp, the zero point, clipping);
- properties every answer must have, computed here from q, scale and zero alone: q inside its
  clamp range, every element within half a step (scale / 2) of its own group's grid point, the
  largest |w| of a symmetric group landing on +-127, zero and constant rows finite;
- the reference (shared/reference/quant.py), equal to the bit: int8 values, float32 scales and
  int8 zero points, for both schemes, three granularities, fp16 and fp32, odd shapes, several
  group sizes, block sizes and seeds.
"""
import pytest
import torch

from shared import reference as ref
from shared.course.testing import assert_deterministic

SCHEMES = ["symmetric", "asymmetric"]
GRANULARITIES = ["tensor", "channel", "group"]
DTYPES = [torch.float32, torch.float16]
SLACK = 1e-4     # float32 rounding of w / scale and of (q - zero) * scale, in units of one step


# ---- helpers -------------------------------------------------------------------------------------------
def weight_like(rows, cols, dtype, device, seed=0):
    """Gaussian rows of different sizes (as trained weights have), a few 8x outliers, rows shifted
    off 0 by different amounts -- all finite."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, 1, generator=g))
    idx = torch.randint(0, rows * cols, (max(1, rows * cols // 50),), generator=g)
    w.view(-1)[idx] *= 8.0                                             # outliers
    w = w + 0.3 * torch.rand(rows, 1, generator=g)                     # rows not centred on 0
    return w.to(dtype=dtype, device=device)


def spread(t, qw):
    """A per-group tensor ([1, 1], [out, 1] or [out, groups]) -> one value per element [out, in]."""
    return t.double().cpu().expand(qw.q.shape[0], -1).repeat_interleave(qw.group_size, dim=1)


def grid_value(qw):
    """(q - zero) * scale, in float64, from the fields alone (not from your code or shared.quant)."""
    q = qw.q.double().cpu()
    if qw.zero is not None:
        q = q - spread(qw.zero, qw)
    return q * spread(qw.scale, qw)


def check_layout(qw, w, scheme, granularity, gs):
    out, cols = w.shape
    want = {"tensor": (1, 1), "channel": (out, 1), "group": (out, cols // gs)}[granularity]
    assert type(qw).__name__ == "QuantWeight", f"quantize_int8 must return a shared.quant.QuantWeight, got {type(qw)}"
    assert qw.q.dtype == torch.int8 and tuple(qw.q.shape) == (out, cols), \
        f"q must be int8 {(out, cols)}, got {qw.q.dtype} {tuple(qw.q.shape)}"
    assert qw.scale.dtype == torch.float32 and tuple(qw.scale.shape) == want, \
        f"{granularity} scales must be float32 {want}, got {qw.scale.dtype} {tuple(qw.scale.shape)}"
    if scheme == "symmetric":
        assert qw.zero is None, "symmetric quantization has no zero point: zero must be None"
    else:
        assert qw.zero is not None and qw.zero.dtype == torch.int8 and tuple(qw.zero.shape) == want, \
            f"asymmetric zero points must be int8 {want}, got {None if qw.zero is None else (qw.zero.dtype, tuple(qw.zero.shape))}"
    assert (qw.scheme, qw.granularity, qw.group_size, qw.dtype) == (scheme, granularity, gs, w.dtype), \
        (f"QuantWeight says scheme={qw.scheme!r} granularity={qw.granularity!r} group_size={qw.group_size} "
         f"dtype={qw.dtype}; expected {scheme!r} {granularity!r} {gs} {w.dtype}")


def check_round_trip(qw, w, what):
    """q in range; scales positive and finite; each element within scale / 2 of its grid point,
    or (past the grid's ends, when clipping) saturated at the end it passed."""
    sym = qw.scheme == "symmetric"
    lo_q = -127 if sym else -128
    q = qw.q.cpu()
    bad = (q < lo_q) | (q > 127)
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{what}: q{list(i)} = {int(q[i])} is outside [{lo_q}, 127]"
                             + (" -- symmetric clamps to -127, not -128 (the grid must be symmetric)" if sym else ""))
    s = qw.scale.cpu()
    assert torch.isfinite(s).all() and (s > 0).all(), \
        f"{what}: every scale must be finite and > 0 (an all-zero group gets 1), got {s.flatten()[:8].tolist()}"
    x = w.double().cpu()
    scale = spread(qw.scale, qw)
    zero = spread(qw.zero, qw) if qw.zero is not None else torch.zeros_like(x)
    deq = grid_value(qw)
    assert torch.isfinite(deq).all(), f"{what}: (q - zero) * scale has NaN or inf"
    low, high = (lo_q - zero) * scale, (127 - zero) * scale          # the grid's ends
    below, above = x < low - scale / 2, x > high + scale / 2           # only when clipping
    err = (x - deq).abs()
    ok = torch.where(below, q == lo_q, torch.where(above, q == 127, err <= scale * (0.5 + SLACK)))
    if not ok.all():
        i = tuple(int(v) for v in (~ok).nonzero()[0])
        if below[i] or above[i]:
            raise AssertionError(f"{what}: w{list(i)} = {x[i]:.6g} lies past the end of its grid "
                                 f"[{low[i]:.6g}, {high[i]:.6g}] (clipped): q must saturate at "
                                 f"{lo_q if below[i] else 127}, got {int(q[i])}")
        raise AssertionError(
            f"{what}: {int((~ok).sum())} of {x.numel()} elements are further than scale / 2 from their grid "
            f"point; first w{list(i)} = {x[i]:.7g}: q = {int(q[i])}, zero = {int(zero[i])}, scale = {scale[i]:.7g}, "
            f"(q - zero) * scale = {deq[i]:.7g}, |error| = {err[i] / scale[i]:.4f} steps (at most 0.5: round "
            f"to the NEAREST grid point, half to even -- not truncation -- with the scale of this element's own group)")


def check_tight(qw, w, what):
    """Symmetric, no clipping: each group's largest |w| lands on +-127 (its scale is max|w| / 127)."""
    n = w.numel() if qw.granularity == "tensor" else qw.group_size
    x, q = w.float().cpu().abs().reshape(-1, n), qw.q.cpu().int().abs().reshape(-1, n)
    short = (x.amax(-1) > 0) & (q.amax(-1) != 127)
    if short.any():
        i = int(short.nonzero()[0])
        raise AssertionError(f"{what}: group {i}'s largest |w| = {float(x[i].max()):.6g} became |q| = "
                             f"{int(q[i].max())}, not 127 -- the symmetric scale is max|w| / 127 of the group's "
                             "own values (not / 128, not a bigger range than the group's)")


def check_equals_reference(qw, want, what):
    for name in ("q", "scale", "zero"):
        got, exp = getattr(qw, name), getattr(want, name)
        if exp is None:
            continue
        got, exp = got.cpu(), exp.cpu()
        same = got == exp
        if not same.all():
            i = tuple(int(v) for v in (~same).nonzero()[0])
            raise AssertionError(
                f"{what}: {name} differs from the reference in {int((~same).sum())} of {exp.numel()} places; first "
                f"at {list(i)}: got {got[i].item():.9g}, expected {exp[i].item():.9g} -- the float32 recipe is in "
                f"shared/reference/quant.py (a true division w / scale, rint half to even, clamp last)")


def call(day, w, **kw):
    """day.quantize_int8(w, **kw), with the simulator's int8 overflow turned into what it means (a GPU
    would silently keep the low 8 bits)."""
    try:
        return day.quantize_int8(w, **kw)
    except OverflowError as e:
        raise AssertionError(f"quantize_int8({', '.join(f'{k}={v!r}' for k, v in kw.items())}): a value outside "
                             f"[-128, 127] was stored into an int8 array ({str(e).split(': ')[-1]}) -- clamp q last; keep 0 "
                             "inside the asymmetric range so the zero point fits; give an all-zero group scale 1 (0 / 0 "
                             "is NaN, and NaN converts to any integer)") from None


def quantize(day, w, what, **kw):
    """Two launches on the same input: if they disagree, a barrier is missing, whatever else is wrong."""
    first, second = call(day, w, **kw), call(day, w, **kw)
    for name in ("q", "scale", "zero"):
        a, b = getattr(first, name, None), getattr(second, name, None)
        if isinstance(a, torch.Tensor):
            assert_deterministic(a, b, f"{name} of {what}")
    return first


def check_all(day, w, what, twice=False, **kw):
    scheme, gran = kw.get("scheme", "symmetric"), kw.get("granularity", "channel")
    qw = quantize(day, w, what, **kw) if twice else call(day, w, **kw)
    gs = kw.get("group_size", 128) if gran == "group" else w.shape[1]
    check_layout(qw, w, scheme, gran, gs)
    check_round_trip(qw, w, what)
    if scheme == "symmetric" and kw.get("clip", 1.0) == 1.0:
        check_tight(qw, w, what)
    kw.pop("block_size", None)
    check_equals_reference(qw, ref.quantize_int8(w, **kw), what)
    return qw


def one_line_value_error(fn, what):
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value).strip()
    assert msg and "\n" not in msg, f"{what}: one line, please: {msg!r}"


# ---- rows worked out by hand ---------------------------------------------------------------------------
# Symmetric: scale = max|w| / 127, q = clamp(rint(w / scale), -127, 127). With max|w| = 127 the scale
# is exactly 1 and q is w rounded half to even: 2.5 -> 2, 1.5 -> 2, -0.5 -> -0, -2.5 -> -2.
SYM_ROWS = [[-1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [127.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.25, -126.5]]
# row 0: scale = 1/127 (float32). 0.5 / (1/127) is exactly 63.5 in float32: a tie, to even -> 64.
SYM_Q = [[-127, 0, 64, 127, 0, 0, 0, 0, 0],
         [127, -2, -2, 0, 0, 2, 2, 3, -126]]            # -126.5: a tie, to even -> -126


@pytest.mark.parametrize("dtype", DTYPES)
def test_symmetric_rows_by_hand(day, device, dtype):
    w = torch.tensor(SYM_ROWS, dtype=dtype, device=device)              # every value exact in fp16
    qw = call(day, w, scheme="symmetric", granularity="channel", block_size=4)
    one127 = torch.tensor(1.0) / torch.tensor(127.0)
    assert qw.q.cpu().tolist() == SYM_Q, (f"symmetric per channel {dtype}: q = {qw.q.cpu().tolist()}, worked out by "
                                          f"hand {SYM_Q} (round half to even: rint, like torch.round)")
    assert qw.scale.cpu().flatten().tolist() == [one127.item(), 1.0], \
        f"scales must be max|w| / 127 per row = [1/127, 1], got {qw.scale.cpu().flatten().tolist()}"
    # per tensor: one scale for both rows, max|w| = 127 -> 1, so row 0 rounds to [-1, 0, 0, 1]
    qt = call(day, w, scheme="symmetric", granularity="tensor", block_size=4)
    assert qt.scale.cpu().tolist() == [[1.0]] and qt.q.cpu()[0, :4].tolist() == [-1, 0, 0, 1], \
        (f"per tensor the whole matrix shares scale 1 (max|w| = 127): row 0 must become [-1, 0, 0, 1], got "
         f"scale {qt.scale.cpu().tolist()}, q {qt.q.cpu()[0, :4].tolist()}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_symmetric_groups_by_hand(day, device, dtype):
    """Groups of 4: [1, -2, 0.5, 0.25] has scale 2/127 -> q = [64 (63.5, a tie), -127, 32, 16];
    [127, 0, -63.5, 1.5] has scale 1 -> [127, 0, -64, 2]. One scale per group, not per row."""
    w = torch.tensor([[1.0, -2.0, 0.5, 0.25, 127.0, 0.0, -63.5, 1.5]], dtype=dtype, device=device)
    qw = call(day, w, scheme="symmetric", granularity="group", group_size=4, block_size=2)
    want_scale = [(torch.tensor(2.0) / torch.tensor(127.0)).item(), 1.0]
    assert qw.q.cpu().tolist() == [[64, -127, 32, 16, 127, 0, -64, 2]], \
        f"symmetric groups of 4: q = {qw.q.cpu().tolist()}, by hand [[64, -127, 32, 16, 127, 0, -64, 2]]"
    assert qw.scale.cpu().tolist() == [want_scale], f"group scales {qw.scale.cpu().tolist()}, by hand [{want_scale}]"


# Asymmetric: the range [min(lo, 0), max(hi, 0)] (it always holds 0) spread over 255 steps,
# zero = -128 - rint(lo' / scale), q = clamp(rint(w / scale) + zero, -128, 127). Each row below has
# range 255, so scale = 1.
ASYM_ROWS = [[-10.0, 0.5, 1.5, 2.5, -0.5, 245.0, 0.0, 100.0],      # zero = -128 + 10 = -118
             [51.0, 102.0, 255.0, 0.5, 2.5, 3.5, 51.0, 51.0],       # all > 0: lo' = 0, zero = -128
             [-255.0, -100.0, -0.5, -2.5, -3.5, -1.0, -1.0, -1.0]]  # all < 0: hi' = 0, zero = -128 + 255 = 127
ASYM_Q = [[-128, -118, -116, -116, -118, 127, -118, -18],
          [-77, -26, 127, -128, -126, -124, -77, -77],
          [-128, 27, 127, 125, 123, 126, 126, 126]]
ASYM_ZERO = [-118, -128, 127]


@pytest.mark.parametrize("dtype", DTYPES)
def test_asymmetric_rows_by_hand(day, device, dtype):
    w = torch.tensor(ASYM_ROWS, dtype=dtype, device=device)
    qw = call(day, w, scheme="asymmetric", granularity="channel", block_size=8)
    assert qw.scale.cpu().flatten().tolist() == [1.0, 1.0, 1.0], \
        f"each row spans 255 (0 included), so every scale is 1; got {qw.scale.cpu().flatten().tolist()}"
    assert qw.zero is not None and qw.zero.cpu().flatten().tolist() == ASYM_ZERO, \
        (f"zero points: by hand {ASYM_ZERO} (zero = -128 - rint(min(lo, 0) / scale): the row's low end lands "
         f"on -128), got {None if qw.zero is None else qw.zero.cpu().flatten().tolist()}")
    assert qw.q.cpu().tolist() == ASYM_Q, f"asymmetric per channel {dtype}: q = {qw.q.cpu().tolist()}, by hand {ASYM_Q}"
    zeros = w.cpu() == 0
    assert (grid_value(qw)[zeros] == 0).all(), "0.0 must come back exactly 0 (q = zero): the range always includes 0"


def test_clipping_saturates_by_hand(day, device):
    """clip = 0.5 keeps half the range: symmetric max|w| = 254 -> scale 1, so -254 saturates at -127
    (never -128) and 200 at 127; asymmetric [-255, 255] -> [-127.5, 127.5], scale 1, zero 0."""
    w = torch.tensor([[-254.0, 127.0, 63.5, 200.0, -1.5, 0.0]], device=device)
    qw = call(day, w, scheme="symmetric", granularity="channel", clip=0.5, block_size=4)
    assert qw.scale.cpu().tolist() == [[1.0]] and qw.q.cpu().tolist() == [[-127, 127, 64, 127, -2, 0]], \
        (f"symmetric clip=0.5: scale {qw.scale.cpu().tolist()} q {qw.q.cpu().tolist()}, by hand [[1.0]] "
         "[[-127, 127, 64, 127, -2, 0]] -- values past the grid saturate at -127 / 127: symmetric never uses -128")
    w = torch.tensor([[-255.0, 255.0, 0.5, 100.0, -1.5, -254.0]], device=device)
    qw = call(day, w, scheme="asymmetric", granularity="channel", clip=0.5, block_size=4)
    got = (qw.scale.cpu().tolist(), None if qw.zero is None else qw.zero.cpu().tolist(), qw.q.cpu().tolist())
    assert got == ([[1.0]], [[0]], [[-128, 127, 0, 100, -2, -128]]), \
        (f"asymmetric clip=0.5 on [-255, 255]: range [-127.5, 127.5], scale 1, zero -128 - rint(-127.5) = 0 "
         f"(-127.5 is a tie: to even, -128), so q = [[-128, 127, 0, 100, -2, -128]]; got scale, zero, q = {got}")


# ---- properties and the reference, on weight-like matrices --------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_weight_like_matrices(day, sizes, device, scheme, granularity, dtype):
    """Odd shapes (7 x 75 per tensor / channel; 7 x 96 in groups of 24, which is not a power of two
    and smaller than the block), outliers, two seeds, two block sizes."""
    rows, cols = sizes(tiny=(7, 96 if granularity == "group" else 75), real=(1001, 4096 if granularity == "group" else 4099))
    for seed, block in ((1, 32), (2, 16)):
        w = weight_like(rows, cols, dtype, device, seed=seed)
        kw = dict(scheme=scheme, granularity=granularity, block_size=sizes(tiny=block, real=8 * block))
        if granularity == "group":
            kw["group_size"] = sizes(tiny=24, real=128)
        check_all(day, w, f"{scheme} per {granularity} {dtype} [{rows}, {cols}] seed {seed}", **kw)


@pytest.mark.parametrize("group_size", [8, 48, 96])
def test_group_sizes(day, sizes, device, group_size):
    """Groups smaller than the block (idle threads), longer (each thread strides), the whole row."""
    w = weight_like(3, 96, torch.float32, device, seed=group_size)
    for scheme in SCHEMES:
        check_all(day, w, f"{scheme} groups of {group_size} in rows of 96", scheme=scheme, granularity="group",
                  group_size=group_size, block_size=16)


def test_group_size_that_does_not_divide_the_row_is_refused(day, device):
    """A ragged last group would need its own length everywhere the weight is read (days 41-47):
    refuse it, in one line, before any kernel runs."""
    w = weight_like(2, 96, torch.float32, device)
    for gs in (40, 97, 0, -32):
        one_line_value_error(lambda: call(day, w, granularity="group", group_size=gs),
                             f"group_size={gs} for rows of 96")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_and_constant_rows(day, device, scheme):
    """An all-zero row, rows of one value (+3, -3, tiny), a zero group inside a normal row: nothing divides by
    zero (a zero group gets scale 1), nothing is NaN or inf, and zeros come back exactly 0."""
    w = weight_like(6, 32, torch.float32, device, seed=3)
    w[0] = 0.0
    w[1] = 3.0
    w[2] = -3.0
    w[3] = 1e-30
    w[4, 8:16] = 0.0
    for gran in GRANULARITIES:
        what = f"{scheme} per {gran}, zero and constant rows"
        qw = check_all(day, w, what, scheme=scheme, granularity=gran, group_size=8, block_size=8)
        back = grid_value(qw)
        assert (back[0] == 0).all() and (back[4, 8:16] == 0).all(), f"{what}: zeros must come back exactly 0"
        if gran != "tensor":
            assert float(qw.scale[0, 0]) == 1.0, \
                f"{what}: an all-zero group has scale 1 (max|w| / 127 = 0 would divide by zero), got {float(qw.scale[0, 0])}"
    zeros = torch.zeros(3, 16, device=device)
    qw = check_all(day, zeros, f"{scheme} per tensor of an all-zero matrix", scheme=scheme, granularity="tensor",
                   block_size=8)
    assert float(qw.scale[0, 0]) == 1.0, f"all-zero matrix: scale must be 1, got {float(qw.scale[0, 0])}"


@pytest.mark.parametrize("block_size", [1, 8, 64])
def test_block_sizes(day, device, block_size):
    """One thread per block (no tree at all), and more threads than a group has elements."""
    w = weight_like(3, 40, torch.float16, device, seed=block_size)
    for scheme in SCHEMES:
        check_all(day, w, f"{scheme} per channel block_size={block_size}", scheme=scheme, granularity="channel",
                  block_size=block_size)


def test_missing_barrier_shows_up(day, sizes, device):
    """One column per thread, and the far half of each row holds all the magnitude: a tree step that
    does not wait for the previous one reads a partial max that is not there yet. Run twice."""
    rows, cols = sizes(tiny=(4, 64), real=(512, 1024))
    for scheme in SCHEMES:
        w = torch.zeros(rows, cols)
        w[:, cols // 2:] = torch.linspace(1, 100, cols - cols // 2) * (torch.arange(rows) % 4 - 1.5)[:, None]
        w[:, : cols // 2] = 0.01 * weight_like(rows, cols // 2, torch.float32, "cpu", seed=9)
        check_all(day, w.to(device), f"{scheme} per channel, block_size={cols} (a cuda.syncthreads() missing?)",
                  twice=True, scheme=scheme, granularity="channel", block_size=cols)


@pytest.mark.parametrize("clip", [0.5, 0.9])
def test_clipping(day, device, clip):
    """clip < 1: the grid covers clip * the range; elements past it saturate at the clamp, the rest
    stay within half a step."""
    w = weight_like(5, 48, torch.float32, device, seed=int(clip * 10))
    for scheme in SCHEMES:
        for gran in ("channel", "group"):
            check_all(day, w, f"{scheme} per {gran} clip={clip}", scheme=scheme, granularity=gran, group_size=16,
                      clip=clip, block_size=16)


def test_strided_input_and_inputs_untouched(day, device):
    base = weight_like(40, 6, torch.float32, device, seed=11)
    w = base.t()                                                       # [6, 40], not contiguous
    keep = base.clone()
    check_all(day, w, "symmetric per channel of a transposed view", scheme="symmetric", granularity="channel",
              block_size=16)
    assert torch.equal(base, keep), "quantize_int8 must not modify w"


BAD = {
    "1-D weight": lambda w: dict(w=w[0]),
    "3-D weight": lambda w: dict(w=w[None]),
    "int32 weight": lambda w: dict(w=w.int()),
    "bfloat16 weight": lambda w: dict(w=w.bfloat16()),
    "empty weight": lambda w: dict(w=w[:0]),
    "unknown scheme": lambda w: dict(w=w, scheme="sym"),
    "unknown granularity": lambda w: dict(w=w, granularity="row"),
    "clip 0": lambda w: dict(w=w, clip=0.0),
    "clip above 1": lambda w: dict(w=w, clip=1.5),
    "block_size 48": lambda w: dict(w=w, block_size=48),
    "block_size 2048": lambda w: dict(w=w, block_size=2048),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_one_line_value_errors(day, device, case):
    w = weight_like(4, 32, torch.float32, device)
    kw = BAD[case](w)
    one_line_value_error(lambda: call(day, kw.pop("w"), **kw), case)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(day, device, value):
    """A NaN or inf makes its group's scale NaN or inf: refuse the weight instead, in one line."""
    w = weight_like(4, 32, torch.float32, device)
    w[2, 5] = value
    one_line_value_error(lambda: call(day, w), f"a weight holding {value}")


# ---- real sizes (GPU) ----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_size_equals_the_reference(day, device, dtype):
    """A Llama-3.2-1B MLP weight, 2048 x 8192 (the down projection's shape), every scheme and
    granularity, with and without clipping, block sizes 128 / 256 / 1024: int8 values, scales and
    zero points equal the reference's bit for bit, and two launches agree. (A GPU compiles
    c * h - c * l into a fused multiply-add and may turn x / s into x * (1 / s): either shows here.)"""
    w = weight_like(2048, 8192, dtype, device, seed=40)
    configs = (("tensor", 128, 1.0), ("channel", 128, 1.0), ("channel", 128, 0.9), ("group", 128, 1.0),
               ("group", 64, 0.7))
    for scheme in SCHEMES:
        for gran, gs, clip in configs:
            for block in (128, 256, 1024):
                what = f"{scheme} per {gran} (group {gs}, clip {clip}) 2048 x 8192 {dtype} block_size={block}"
                qw = quantize(day, w, what, scheme=scheme, granularity=gran, group_size=gs, clip=clip, block_size=block)
                check_equals_reference(qw, ref.quantize_int8(w, scheme=scheme, granularity=gran, group_size=gs,
                                                             clip=clip), what)
            check_round_trip(qw, w, what)
