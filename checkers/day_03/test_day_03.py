"""Day 03 checker: row_sum and row_max, one block per row. Run: pytest checkers/day_03

Every kernel runs twice on the same input (check_kernel): two runs that disagree mean a race,
and the message says so before any advice about the values."""
import pytest
import torch

from shared import reference as ref
from shared.course.testing import check_kernel, randn

DTYPES = [torch.float32, torch.float16]


def sum_tol(cols: int) -> dict:
    """fp32 sums in a different order than torch's differ by rounding that grows with the row length."""
    return dict(atol=1e-5 + 1e-6 * cols, rtol=1e-5)


def shuffle_modes(tier):
    """The shared-memory tree everywhere; the warp-shuffle finish too where warps exist (GPU)."""
    return [False] if tier == "sim" else [False, True]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_longer_than_the_block_and_not_powers_of_two(day, sizes, device, tier, dtype):
    """Each thread must stride over the row (c = tid, tid + blockDim, ...) and every column count."""
    for rows, cols in sizes(tiny=[(3, 100), (1, 33)], real=[(64, 49152), (2048, 576), (7, 1000003)]):
        x = randn(rows, cols, dtype=dtype, device=device, seed=cols)
        for ws in shuffle_modes(tier):
            what = f"[{rows}, {cols}] {dtype}, block_size=32, warp_shuffle={ws}"
            check_kernel(lambda: day.row_sum(x, block_size=32, warp_shuffle=ws), ref.row_sum(x), f"row_sum {what}",
                         **sum_tol(cols))
            check_kernel(lambda: day.row_max(x, block_size=32, warp_shuffle=ws), ref.row_max(x), f"row_max {what}",
                         atol=0, rtol=0)


@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_any_block_size(day, sizes, device, tier, block_size):
    """Bigger blocks than a warp: the tree crosses warps, so every step needs cuda.syncthreads()."""
    rows, cols = sizes(tiny=(2, 300), real=(512, 4099))
    x = randn(rows, cols, device=device, seed=block_size)
    for ws in shuffle_modes(tier):
        what = f"[{rows}, {cols}] block_size={block_size} warp_shuffle={ws}"
        check_kernel(lambda: day.row_sum(x, block_size=block_size, warp_shuffle=ws), ref.row_sum(x), f"row_sum {what}",
                     **sum_tol(cols))
        check_kernel(lambda: day.row_max(x, block_size=block_size, warp_shuffle=ws), ref.row_max(x), f"row_max {what}",
                     atol=0, rtol=0)


def test_missing_barrier_shows_up(day, sizes, device):
    """Several rows, a block of 128 threads: a tree step that does not wait for the previous one
    (or for the first writes to shared memory) reads partial sums that are not there yet."""
    rows, cols = sizes(tiny=(2, 1000), real=(256, 100_000))
    for seed in range(2):
        x = randn(rows, cols, device=device, seed=100 + seed)
        check_kernel(lambda: day.row_sum(x, block_size=128), ref.row_sum(x), f"row_sum [{rows}, {cols}] block_size=128 "
                     f"(run {seed}) -- a cuda.syncthreads() missing?", **sum_tol(cols))


def test_rows_shorter_than_the_block(day, device):
    """Threads with no column must contribute the identity: 0 for a sum, -inf for a max."""
    x = -1.0 - randn(3, 5, device=device, seed=7).abs()
    check_kernel(lambda: day.row_sum(x, block_size=64), ref.row_sum(x), "row_sum of 5 columns with 64 threads")
    check_kernel(lambda: day.row_max(x, block_size=64), ref.row_max(x), "row_max of 5 negative columns with 64 threads "
                 "-- threads past the end must start from -inf, not 0", atol=0, rtol=0)
    one = randn(4, 1, device=device, seed=8)
    check_kernel(lambda: day.row_max(one, block_size=32), ref.row_max(one), "row_max of a single column",
                 atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_max_of_all_negative_rows(day, device, dtype):
    """A max that starts from 0 instead of -inf returns 0 for these rows."""
    x = (-1.0 - randn(4, 70, device=device, seed=9).abs() * 100).to(dtype)
    check_kernel(lambda: day.row_max(x, block_size=32), ref.row_max(x), f"row_max of all-negative rows {dtype}",
                 atol=0, rtol=0)


def test_minus_infinity_entries(day, device):
    """Masked (-inf) entries: a max ignores them unless the whole row is -inf; a sum becomes -inf."""
    x = randn(3, 90, device=device, seed=10)
    x[0, ::2] = float("-inf")
    x[1, :] = float("-inf")
    x[2, 89] = float("-inf")
    check_kernel(lambda: day.row_max(x, block_size=32), ref.row_max(x), "row_max with -inf entries", atol=0, rtol=0)
    check_kernel(lambda: day.row_sum(x, block_size=32), ref.row_sum(x), "row_sum with -inf entries")


def test_strided_input(day, device):
    base = randn(40, 6, device=device, seed=11)
    check_kernel(lambda: day.row_sum(base.t(), block_size=32), ref.row_sum(base.t()), "row_sum of a transposed view")
    check_kernel(lambda: day.row_max(base.t(), block_size=32), ref.row_max(base.t()), "row_max of a transposed view",
                 atol=0, rtol=0)


def test_output_is_fp32_rows_and_empty_input(day, device):
    x = randn(3, 40, dtype=torch.float16, device=device, seed=12)
    for fn in (day.row_sum, day.row_max):
        out = fn(x, block_size=32)
        assert out.shape == (3,) and out.dtype == torch.float32, \
            f"{fn.__name__} must return [rows] float32, got {tuple(out.shape)} {out.dtype}"
    assert day.row_sum(torch.empty(0, 8, device=device)).shape == (0,)


def test_bad_inputs_raise_value_error(day, device):
    for fn in (day.row_sum, day.row_max):
        with pytest.raises(ValueError):
            fn(torch.zeros(10, device=device))
        with pytest.raises(ValueError):
            fn(torch.zeros(2, 10, device=device), block_size=48)   # the tree needs a power of two


@pytest.mark.gpu
def test_warp_shuffle_matches_the_tree(day, device):
    x = randn(1000, 4096, device=device, seed=13)
    check_kernel(lambda: day.row_sum(x, warp_shuffle=True), day.row_sum(x, warp_shuffle=False),
                 "row_sum: warp-shuffle finish vs shared-memory tree", **sum_tol(4096))
    check_kernel(lambda: day.row_max(x, warp_shuffle=True, block_size=1024), ref.row_max(x),
                 "row_max, block 1024, shuffle", atol=0, rtol=0)
