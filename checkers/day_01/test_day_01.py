"""Day 01 checker: vector_add. Run: pytest checkers/day_01"""
import pytest
import torch

from shared.course.testing import assert_close, randn, tol

DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_on_awkward_lengths(day, sizes, device, dtype):
    """Lengths that are not multiples of the block: the last block must not write past the end."""
    for n in sizes(tiny=[1, 31, 33, 100], real=[1, 255, 257, 1_000_003]):
        a = randn(n, dtype=dtype, device=device, seed=n)
        b = randn(n, dtype=dtype, device=device, seed=n + 1)
        assert_close(day.vector_add(a, b), a + b, f"vector_add n={n} {dtype}", **tol(dtype))


@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_any_block_size_covers_everything(day, sizes, device, block_size):
    """The grid must be ceil(n / block_size) blocks, whatever the block size."""
    n = sizes(tiny=150, real=100_003)
    a, b = randn(n, device=device, seed=1), randn(n, device=device, seed=2)
    assert_close(day.vector_add(a, b, block_size=block_size), a + b, f"vector_add block_size={block_size}")


def test_returns_new_tensor_and_leaves_inputs_alone(day, device):
    a, b = randn(65, device=device, seed=3), randn(65, device=device, seed=4)
    a0, b0 = a.clone(), b.clone()
    out = day.vector_add(a, b)
    assert out.data_ptr() not in (a.data_ptr(), b.data_ptr()), "vector_add must return a new tensor"
    assert out.dtype == a.dtype and out.device == a.device, "output must have the inputs' dtype and device"
    assert torch.equal(a, a0) and torch.equal(b, b0), "vector_add must not modify its inputs"


def test_empty_input(day, device):
    out = day.vector_add(torch.empty(0, device=device), torch.empty(0, device=device))
    assert out.shape == (0,)


@pytest.mark.parametrize("shapes", [((10,), (11,)), ((4, 4), (4, 4))])
def test_bad_shapes_raise_value_error(day, device, shapes):
    a, b = (torch.zeros(s, device=device) for s in shapes)
    with pytest.raises(ValueError):
        day.vector_add(a, b)


def test_mixed_dtypes_raise_value_error(day, device):
    with pytest.raises(ValueError):
        day.vector_add(torch.zeros(8, device=device), torch.zeros(8, device=device, dtype=torch.float16))
