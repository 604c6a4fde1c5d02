"""Day 02 checker: silu and silu_mul on a 2-D grid. Run: pytest checkers/day_02"""
import pytest
import torch

from shared import reference as ref
from shared.course.testing import assert_close, randn, tol

DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_matches_reference_on_odd_shapes(day, sizes, device, dtype):
    """Shapes that are not multiples of the block in either direction: guard rows AND cols."""
    for shape in sizes(tiny=[(1, 1), (3, 37), (7, 65)], real=[(1, 1), (17, 1000), (257, 4099)]):
        x = randn(*shape, dtype=dtype, device=device, seed=shape[1], scale=3.0)
        assert_close(day.silu(x), ref.silu(x), f"silu{shape} {dtype}", **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_reference_on_odd_shapes(day, sizes, device, dtype):
    for shape in sizes(tiny=[(1, 33), (5, 40)], real=[(1, 1536), (129, 1537)]):
        gate = randn(*shape, dtype=dtype, device=device, seed=1, scale=3.0)
        up = randn(*shape, dtype=dtype, device=device, seed=2)
        assert_close(day.silu_mul(gate, up), ref.silu_mul(gate, up), f"silu_mul{shape} {dtype}", **tol(dtype))


@pytest.mark.parametrize("block", [(32, 1), (8, 8), (16, 4), (4, 16)])
def test_any_2d_block_shape_covers_everything(day, sizes, device, block):
    """block = (threads along columns, threads along rows): the grid must cover both dimensions."""
    shape = sizes(tiny=(9, 21), real=(1000, 999))
    gate, up = randn(*shape, device=device, seed=3), randn(*shape, device=device, seed=4)
    assert_close(day.silu_mul(gate, up, block=block), ref.silu_mul(gate, up), f"silu_mul block={block}")
    assert_close(day.silu(gate, block=block), ref.silu(gate), f"silu block={block}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dimensional_input_is_one_row(day, device, dtype):
    x = randn(45, dtype=dtype, device=device, seed=5, scale=3.0)
    out = day.silu(x)
    assert out.shape == (45,), f"silu of a 1-D tensor must keep its shape, got {tuple(out.shape)}"
    assert_close(out, ref.silu(x), f"silu 1-D {dtype}", **tol(dtype))


def test_extreme_values_give_no_nan(day, device):
    """silu(-100) is -0 and silu(100) is 100: exp(x) / (1 + exp(x)) would be inf / inf = NaN on a GPU."""
    for dtype in DTYPES:
        x = torch.tensor([[-100.0, -90.0, -30.0, -1.0, 0.0, 1.0, 30.0, 90.0, 100.0]],
                         dtype=dtype, device=device)
        assert_close(day.silu(x), ref.silu(x), f"silu at extreme values {dtype}", **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_work_through_strides(day, device, dtype):
    """Views are not copies: a transposed tensor and a column slice must be read through their strides."""
    base = randn(13, 34, dtype=dtype, device=device, seed=6, scale=3.0)
    for what, x in [("a transposed view", base.t()), ("a column slice [:, ::3]", base[:, ::3]),
                    ("a row slice [2:9]", base[2:9])]:
        assert_close(day.silu(x), ref.silu(x), f"silu of {what} {dtype}", **tol(dtype))


def test_silu_mul_on_halves_of_a_fused_projection(day, device):
    """gate and up often come from one [rows, 2*cols] matmul: up = gu[:, cols:] has a row stride of 2*cols."""
    gu = randn(6, 2 * 19, device=device, seed=7, scale=3.0)
    gate, up = gu[:, :19], gu[:, 19:]
    assert_close(day.silu_mul(gate, up), ref.silu_mul(gate, up), "silu_mul on slices of a fused tensor")
    assert_close(day.silu_mul(up.t(), gate.t()), ref.silu_mul(up.t(), gate.t()), "silu_mul on transposed slices")


def test_returns_new_tensor_and_leaves_inputs_alone(day, device):
    gate, up = randn(4, 33, device=device, seed=8), randn(4, 33, device=device, seed=9)
    g0, u0 = gate.clone(), up.clone()
    out = day.silu_mul(gate, up)
    assert out.data_ptr() not in (gate.data_ptr(), up.data_ptr()), "silu_mul must return a new tensor"
    assert out.dtype == gate.dtype and out.device == gate.device, "output must have gate's dtype and device"
    assert torch.equal(gate, g0) and torch.equal(up, u0), "silu_mul must not modify its inputs"
    assert day.silu(gate).data_ptr() != gate.data_ptr(), "silu must return a new tensor"
    assert torch.equal(gate, g0), "silu must not modify its input"


def test_empty_input(day, device):
    assert day.silu(torch.empty(0, 8, device=device)).shape == (0, 8)
    assert day.silu_mul(torch.empty(3, 0, device=device), torch.empty(3, 0, device=device)).shape == (3, 0)


@pytest.mark.parametrize("shapes", [((4, 8), (4, 9)), ((8, 4), (4, 8))])
def test_silu_mul_shape_mismatch_raises_value_error(day, device, shapes):
    gate, up = (torch.zeros(s, device=device) for s in shapes)
    with pytest.raises(ValueError):
        day.silu_mul(gate, up)


def test_bad_inputs_raise_value_error(day, device):
    with pytest.raises(ValueError):
        day.silu_mul(torch.zeros(4, 8, device=device), torch.zeros(4, 8, device=device, dtype=torch.float16))
    with pytest.raises(ValueError):
        day.silu(torch.zeros(2, 3, 4, device=device))


@pytest.mark.gpu
def test_smollm2_mlp_shapes(day, device):
    """SmolLM2-135M's MLP: [tokens, 1536] in fp16, prefill and decode."""
    for T in (1, 512):
        gate = randn(T, 1536, dtype=torch.float16, device=device, seed=T, scale=3.0)
        up = randn(T, 1536, dtype=torch.float16, device=device, seed=T + 1)
        assert_close(day.silu_mul(gate, up), ref.silu_mul(gate, up), f"silu_mul [{T}, 1536] fp16", **tol(torch.float16))
