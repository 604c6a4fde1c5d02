"""Day 10 checker: rmsnorm (HF LlamaRMSNorm semantics). Run: pytest checkers/day_10"""
import pytest
import torch

from shared.reference import rmsnorm as reference_rmsnorm
from shared.course.testing import assert_close, randn, tol

DTYPES = [torch.float32, torch.float16]


def hf_rmsnorm(x, weight, eps):
    """transformers' own LlamaRMSNorm with our weight and eps (on the CPU)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    norm = LlamaRMSNorm(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight.cpu())
        return norm(x.cpu())


def rows_at_many_scales(rows, hidden, dtype, device, seed=0):
    """Rows of ordinary size, tiny size (1e-4: mean(x^2) ~ 1e-8 << eps, so a missing eps shows)
    and large size (100)."""
    x = randn(rows, hidden, seed=seed)
    scales = torch.tensor([1.0, 1e-4, 100.0, 0.5, 3e-3])[torch.arange(rows) % 5]
    return (x * scales[:, None]).to(dtype=dtype, device=device)


def random_weight(hidden, dtype, device, seed=1):
    """Not ones: a kernel that forgets the weight (or multiplies the wrong element) must fail."""
    return (1.0 + 0.5 * randn(hidden, seed=seed)).to(dtype=dtype, device=device)


@pytest.fixture(scope="module")
def eps(tiny_model):
    from shared.reference import load_config
    return load_config(tiny_model).rms_norm_eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [50, 576])
def test_matches_hf_llama_rmsnorm(day, sizes, device, dtype, hidden, eps):
    """Hidden sizes that are not a multiple of the block; rows at scales where eps matters."""
    rows = sizes(tiny=3, real=257)
    x = rows_at_many_scales(rows, hidden, dtype, device)
    w = random_weight(hidden, dtype, device)
    out = day.rmsnorm(x, w, eps, block_size=32)
    assert out.dtype == dtype, f"rmsnorm must return x's dtype {dtype}, got {out.dtype}"
    assert_close(out, hf_rmsnorm(x, w, eps), f"rmsnorm hidden={hidden} {dtype} eps={eps:g}", **tol(dtype))


@pytest.mark.parametrize("block_size", [64, 128])
def test_block_sizes_and_eps_values(day, sizes, device, block_size):
    """More threads than some rows have columns (hidden=97 < 128): idle threads must add 0."""
    hidden = sizes(tiny=97, real=2049)
    x = rows_at_many_scales(2, hidden, torch.float32, device, seed=block_size)
    w = random_weight(hidden, torch.float32, device)
    for eps in (1e-6, 1e-5):
        assert_close(day.rmsnorm(x, w, eps, block_size=block_size), hf_rmsnorm(x, w, eps),
                     f"rmsnorm block_size={block_size} eps={eps:g}")


def test_barriers_in_the_block_reduction(day, sizes, device):
    """Each thread owns exactly one column and the values differ wildly per thread, so the sum
    is wrong if any step of the tree reads a partial sum before its owner wrote it
    (a missing cuda.syncthreads())."""
    n = sizes(tiny=64, real=1024)
    x = torch.zeros(2, n)
    x[:, n // 2:] = 1000.0 * (1 + torch.arange(n - n // 2))    # the far half holds all the mass
    x = x.to(device)
    w = random_weight(n, torch.float32, device)
    assert_close(day.rmsnorm(x, w, 1e-5, block_size=n), hf_rmsnorm(x, w, 1e-5),
                 f"rmsnorm with one column per thread (block_size={n})")


def test_zero_row_gives_zeros_not_nan(day, device):
    """eps keeps rsqrt finite: an all-zero row must come out as zeros."""
    x = torch.zeros(1, 40, device=device)
    out = day.rmsnorm(x, random_weight(40, torch.float32, device), 1e-5, block_size=32)
    assert_close(out, torch.zeros_like(x), "rmsnorm of an all-zero row (did you add eps?)", atol=0, rtol=0)


def test_leading_dims_and_inputs_untouched(day, device):
    """x [2, 3, hidden] normalizes each of the 6 rows; x and weight stay as they were."""
    x = randn(2, 3, 24, device=device, seed=5)
    w = random_weight(24, torch.float32, device)
    x0, w0 = x.clone(), w.clone()
    out = day.rmsnorm(x, w, 1e-5, block_size=32)
    assert_close(out, reference_rmsnorm(x, w, 1e-5), "rmsnorm of x [2, 3, 24]")
    assert torch.equal(x, x0) and torch.equal(w, w0), "rmsnorm must not modify x or weight"


@pytest.mark.parametrize("case", ["weight too short", "weight 2-D", "dtypes differ"])
def test_bad_inputs_raise_value_error(day, device, case):
    x, w = torch.ones(2, 8, device=device), torch.ones(8, device=device)
    if case == "weight too short":
        w = w[:7]
    elif case == "weight 2-D":
        w = w[None]
    else:
        w = w.half()
    with pytest.raises(ValueError):
        day.rmsnorm(x, w, 1e-5)


@pytest.mark.parametrize("block_size", [48, 96])
def test_block_size_not_a_power_of_two_is_refused_or_handled(day, device, block_size):
    """The tree reduction halves the active threads each step: with 96 threads the step 3 -> 1 drops
    partial[2], so the sum misses a third of the block. A block size that is not a power of two must
    raise a one-line ValueError, or (if you handle it) give HF's answer."""
    hidden = 97
    x = rows_at_many_scales(2, hidden, torch.float32, device, seed=block_size)
    w = random_weight(hidden, torch.float32, device)
    try:
        out = day.rmsnorm(x, w, 1e-5, block_size=block_size)
    except ValueError as e:
        assert "\n" not in str(e).strip(), f"error messages are one line, got {str(e)!r}"
        return
    assert_close(out, hf_rmsnorm(x, w, 1e-5), f"rmsnorm block_size={block_size} (not a power of two: "
                 "refuse it with a ValueError, or make the reduction handle it)")


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [576, 2048])
@pytest.mark.parametrize("block_size", [128, 256, 1024])
def test_real_shapes_fp16(day, device, hidden, block_size):
    """A 4096-token prefill at SmolLM2 (576) and Llama-3.2-1B (2048) widths."""
    x = rows_at_many_scales(4096, hidden, torch.float16, device, seed=9)
    w = random_weight(hidden, torch.float16, device)
    assert_close(day.rmsnorm(x, w, 1e-5, block_size=block_size), hf_rmsnorm(x, w, 1e-5),
                 f"rmsnorm 4096 x {hidden} fp16 block_size={block_size}", **tol(torch.float16))


def test_fp16_rounding_order_bit_for_bit(day, device, eps):
    """HF's order in fp16: x.float() -> variance -> x * rsqrt(var + eps) -> round to fp16 -> weight *
    that (one more rounding). The inputs are multiples of 1/8 times a power of two, so every sum of
    squares is exact in fp32 whatever the summation order: the result must equal HF's bit for bit.
    Multiplying by the weight before rounding to fp16 is off by an fp16 ulp in many elements."""
    hidden = 200
    k = torch.randint(-32, 33, (3, hidden), generator=torch.Generator().manual_seed(10)).float() / 8
    x = (k * torch.tensor([1.0, 2.0 ** -6, 16.0])[:, None]).to(dtype=torch.float16, device=device)
    w = random_weight(hidden, torch.float16, device, seed=11)
    out = day.rmsnorm(x, w, eps, block_size=64)
    want = hf_rmsnorm(x, w, eps)
    differ = (out.cpu() != want).nonzero()
    assert not len(differ), (f"fp16 rmsnorm: {len(differ)} of {out.numel()} elements differ from HF bit for bit, "
                             f"first at {tuple(differ[0].tolist())} -- round x * inv_rms to fp16 first, then "
                             "multiply by the weight (float32(float16(v)))")
