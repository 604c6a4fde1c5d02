"""Day 04 checker: softmax in one kernel. Run: pytest checkers/day_04

Every kernel runs twice on the same input (check_kernel): two runs that disagree mean a race,
and the message says so before any advice about the values. math.exp overflowing in the
simulator is reported as the missing max subtraction it is."""
import pytest
import torch

from shared import reference as ref
from shared.course.testing import assert_close, check_kernel, randn, tol

DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_on_rows_longer_than_the_block(day, sizes, device, dtype):
    for rows, cols in sizes(tiny=[(3, 100), (2, 33), (1, 1)], real=[(4608, 512), (4, 49152), (3, 1000003)]):
        x = randn(rows, cols, dtype=dtype, device=device, seed=cols, scale=3.0)
        check_kernel(lambda: day.softmax(x, block_size=32), ref.softmax(x), f"softmax [{rows}, {cols}] {dtype}",
                     **tol(dtype))


@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_any_block_size(day, sizes, device, block_size):
    rows, cols = sizes(tiny=(2, 300), real=(1000, 4099))
    x = randn(rows, cols, device=device, seed=block_size, scale=3.0)
    check_kernel(lambda: day.softmax(x, block_size=block_size), ref.softmax(x), f"softmax [{rows}, {cols}] "
                 f"block_size={block_size}")


def test_missing_barrier_shows_up(day, sizes, device):
    """Max, then sum, in the same shared memory: without a barrier after reading the max, the sum's
    first writes overwrite it while other threads still read it (and each tree step needs one too)."""
    rows, cols = sizes(tiny=(2, 700), real=(512, 32768))
    for seed in range(2):
        x = randn(rows, cols, device=device, seed=50 + seed, scale=3.0)
        check_kernel(lambda: day.softmax(x, block_size=128), ref.softmax(x), f"softmax [{rows}, {cols}] block_size=128 "
                     f"(run {seed}) -- a cuda.syncthreads() missing?")


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_do_not_overflow(day, device, dtype):
    """exp(10000) overflows: subtract the row max first. Rows of equal huge values are uniform."""
    x = randn(3, 50, dtype=torch.float32, device=device, seed=3, scale=1e4).to(dtype)
    x[2] = 1e4
    check_kernel(lambda: day.softmax(x, block_size=32), ref.softmax(x), f"softmax of logits ~1e4 {dtype}", **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_very_negative_logits(day, device, dtype):
    """Every logit near -10000: a max that starts at 0 instead of -inf subtracts 0, every exp
    underflows to 0 and the row comes out as zeros instead of a distribution."""
    x = (randn(3, 50, device=device, seed=8, scale=30.0) - 1e4).to(dtype)
    check_kernel(lambda: day.softmax(x, block_size=32), ref.softmax(x), f"softmax of logits ~-1e4 {dtype} -- "
                 "does the row max start at -inf?", **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_entries_and_fully_masked_rows(day, device, dtype):
    """-inf entries get probability 0; a row that is all -inf gives zeros (the reference), never NaN."""
    x = randn(5, 40, dtype=dtype, device=device, seed=4, scale=3.0)
    for i in range(3):
        x[i, 10 * i + 1:] = float("-inf")     # a causal-style mask: row i sees its first 10*i+1 columns
    x[3] = float("-inf")
    x[4, ::2] = float("-inf")
    check_kernel(lambda: day.softmax(x, block_size=32), ref.softmax(x), f"softmax with -inf entries {dtype}",
                 **tol(dtype))


def test_rows_shorter_than_the_block_sum_to_one(day, device):
    x = randn(4, 3, device=device, seed=5, scale=3.0)
    out = check_kernel(lambda: day.softmax(x, block_size=64), ref.softmax(x), "softmax of 3 columns with 64 threads")
    assert_close(out.sum(-1), torch.ones(4, device=device), "each row of softmax must sum to 1")


def test_strided_input_and_new_output(day, device):
    base = randn(40, 6, device=device, seed=6, scale=3.0)
    b0 = base.clone()
    out = check_kernel(lambda: day.softmax(base.t(), block_size=32), ref.softmax(base.t()),
                       "softmax of a transposed view")
    assert torch.equal(base, b0), "softmax must not modify its input"
    assert out.dtype == base.dtype and out.device == base.device, "output must have x's dtype and device"


def test_empty_input(day, device):
    assert day.softmax(torch.empty(0, 8, device=device)).shape == (0, 8)


def test_bad_inputs_raise_value_error(day, device):
    with pytest.raises(ValueError):
        day.softmax(torch.zeros(10, device=device))
    with pytest.raises(ValueError):
        day.softmax(torch.zeros(2, 10, device=device), block_size=96)


@pytest.mark.gpu
def test_attention_shaped_scores_fp16(day, device):
    """SmolLM2 attention: 9 heads x 512 queries over 512 keys, causal mask, fp16, a block per row."""
    x = randn(9 * 512, 512, dtype=torch.float16, device=device, seed=7, scale=4.0)
    mask = torch.ones(512, 512, dtype=torch.bool, device=device).triu(1).repeat(9, 1)
    x = x.masked_fill(mask, float("-inf"))
    for bs in (128, 1024):
        check_kernel(lambda: day.softmax(x, block_size=bs), ref.softmax(x), f"causal softmax fp16 block_size={bs}",
                     **tol(torch.float16))
