"""Day 13 checker: naive_attention for one head. Run: pytest checkers/day_13"""
import pytest
import torch

from shared.reference import attention
from shared.course.testing import assert_close, randn, run_kernel, tol

DTYPES = [torch.float32, torch.float16]


def one_head(q, k, v, scale=1.0):
    """Inputs for one head, seeded; `scale` stretches q to make the scores large."""
    return (randn(*q, seed=1, scale=scale), randn(*k, seed=2), randn(*v, seed=3))


def expected(q, k, v):
    """The reference with H = KV = 1: [T, d] -> [T, 1, d] and back."""
    return attention(q[:, None], k[:, None], v[:, None])[:, 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, S", [(6, 6), (3, 7), (1, 9)], ids=["T==S", "T<S", "one-query"])
def test_matches_reference(day, sizes, device, dtype, T, S):
    """Causal mask aligned to the end: query i sits at position S - T + i."""
    T, S, d = sizes(tiny=(T, S, 16), real=(T * 64, S * 64, 64))
    q, k, v = (t.to(device=device, dtype=dtype) for t in one_head((T, d), (S, d), (S, d)))
    out = day.naive_attention(q, k, v)
    assert_close(out, expected(q, k, v), f"naive_attention T={T} S={S} d={d} {dtype}", **tol(dtype, 2))


@pytest.mark.parametrize("tile, softmax_threads", [(4, 32), (8, 64)])
def test_any_launch_config(day, sizes, device, tile, softmax_threads):
    """Tiles that do not divide T, S or d, and softmax rows longer than the block (a strided loop),
    some shorter: every element is written and every reduction waits for its barrier."""
    T, S, d = sizes(tiny=(5, 70, 12), real=(300, 1000, 80))
    q, k, v = (t.to(device) for t in one_head((T, d), (S, d), (S, d)))
    out = day.naive_attention(q, k, v, tile=tile, softmax_threads=softmax_threads)
    assert_close(out, expected(q, k, v), f"naive_attention tile={tile} softmax_threads={softmax_threads}",
                 **tol(torch.float32, 2))


def test_large_scores_stay_finite(day, device):
    """Scores in the thousands: exp overflows (even in the simulator's float64 math) unless the
    softmax subtracts the row max first."""
    q, k, v = (t.to(device) for t in one_head((4, 16), (6, 16), (6, 16), scale=1000.0))
    out = run_kernel(lambda: day.naive_attention(q, k, v), "naive_attention with large scores")
    assert_close(out, expected(q, k, v), "naive_attention with large scores", **tol(torch.float32, 2))


def test_first_query_sees_only_its_past(day, device):
    """With T == S, query 0 sees key 0 alone, so its output is exactly v[0]."""
    q, k, v = (t.to(device) for t in one_head((4, 8), (4, 8), (4, 8)))
    out = day.naive_attention(q, k, v)
    assert_close(out[0], v[0], "query 0 (it may attend to key 0 only)", **tol(torch.float32))


def test_returns_new_tensor_and_leaves_inputs_alone(day, device):
    q, k, v = (t.to(device=device, dtype=torch.float16) for t in one_head((3, 8), (5, 8), (5, 8)))
    before = [t.clone() for t in (q, k, v)]
    out = day.naive_attention(q, k, v)
    assert out.shape == (3, 8) and out.dtype == q.dtype and out.device == q.device, \
        "naive_attention must return [T, d] in q's dtype on q's device"
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), before)), "naive_attention must not modify q, k, v"


@pytest.mark.parametrize("shapes", [((5, 8), (3, 8), (3, 8)), ((2, 8), (4, 6), (4, 6)),
                                    ((2, 8), (4, 8), (5, 8)), ((1, 2, 8), (4, 8), (4, 8))],
                         ids=["T>S", "head-size", "k-v-length", "3-D-q"])
def test_bad_shapes_raise_value_error(day, device, shapes):
    q, k, v = (torch.zeros(s, device=device) for s in shapes)
    with pytest.raises(ValueError):
        day.naive_attention(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_prefill_length(day, device, dtype):
    """A 1024-token prompt at SmolLM2's head size: the [T, S] scores are 4 MB per head."""
    q, k, v = (t.to(device=device, dtype=dtype) for t in one_head((1024, 64), (1024, 64), (1024, 64)))
    assert_close(day.naive_attention(q, k, v), expected(q, k, v), f"naive_attention T=S=1024 {dtype}",
                 **tol(dtype, 2))
