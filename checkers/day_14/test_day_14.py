"""Day 14 checker: attention (multi-head, grouped-query, causal). Run: pytest checkers/day_14"""
import math
from types import SimpleNamespace

import pytest
import torch

from shared.reference import attention
from shared.course.testing import cuda_time_ms, record_bench, assert_close, randn, run_kernel, tol

DTYPES = [torch.float32, torch.float16]


def qkv(T, S, H, KV, hd, dtype=torch.float32, device="cpu", scale=1.0):
    return (randn(T, H, hd, dtype=dtype, device=device, seed=1, scale=scale),
            randn(S, KV, hd, dtype=dtype, device=device, seed=2),
            randn(S, KV, hd, dtype=dtype, device=device, seed=3))


@pytest.fixture(scope="module")
def block(sizes):
    """Threads per (row, head) block: few in the simulator (one OS thread each)."""
    return sizes(tiny=8, real=128)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H, KV, T, S", [(4, 2, 5, 5), (9, 3, 2, 5), (4, 4, 3, 3), (8, 2, 3, 4), (12, 4, 2, 3)],
                         ids=["GQA-4/2-oddT", "SmolLM2-9/3-T<S", "MHA-4/4", "GQA-8/2", "GQA-12/4"])
def test_matches_reference(day, sizes, device, block, dtype, H, KV, T, S):
    """Query head h reads KV head h // (H // KV). 8/2 and 12/4 have H / KV != KV (in 4/2 and 9/3
    the group size equals the KV head count, so mixing up the two passes there)."""
    T, S, hd = sizes(tiny=(T, S, 16), real=(T * 100 + 1, S * 100 + 1, 64))
    q, k, v = qkv(T, S, H, KV, hd, dtype, device)
    out = day.attention(q, k, v, block_size=block)
    assert_close(out, attention(q, k, v), f"attention H={H} KV={KV} T={T} S={S} {dtype}", **tol(dtype, 2))


def test_matches_hf_eager_attention(day, sizes, device, block):
    """Hugging Face's own Llama attention math (repeat_kv + additive causal mask + fp32 softmax)."""
    from transformers.models.llama.modeling_llama import eager_attention_forward
    H, KV, T, hd = 4, 2, sizes(tiny=3, real=257), 16
    q, k, v = qkv(T, T, H, KV, hd, device=device)
    mask = torch.full((T, T), float("-inf"), device=device).triu(1)[None, None]   # [1, 1, T, S]
    module = SimpleNamespace(num_key_value_groups=H // KV, training=False)
    hf, _ = eager_attention_forward(module, q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                    v.transpose(0, 1)[None], mask, scaling=1 / math.sqrt(hd))
    assert_close(day.attention(q, k, v, block_size=block), hf[0], "attention vs HF eager_attention_forward",
                 **tol(torch.float32, 2))


@pytest.mark.parametrize("block_size", [16, 32])
def test_rows_longer_than_the_block(day, sizes, device, block_size):
    """More keys than threads (a strided loop over keys) and a head size that is not a multiple
    of the block: every score, every output element, every barrier."""
    H, KV, T, S, hd = 2, 1, 2, sizes(tiny=70, real=3000), 24
    q, k, v = qkv(T, S, H, KV, hd, device=device)
    assert_close(day.attention(q, k, v, block_size=block_size), attention(q, k, v),
                 f"attention S={S} block_size={block_size}", **tol(torch.float32, 2))


def test_kv_cache_views(day, device, block):
    """The engine passes k, v as views of its cache: kc[:, :S].transpose(0, 1) (not contiguous)."""
    KV, S, hd, H = 2, 6, 16, 4
    k_cache = randn(KV, 9, hd, device=device, seed=5)
    v_cache = randn(KV, 9, hd, device=device, seed=6)
    k, v = k_cache[:, :S].transpose(0, 1), v_cache[:, :S].transpose(0, 1)
    q = randn(1, H, hd, device=device, seed=7)
    assert_close(day.attention(q, k, v, block_size=block), attention(q, k.contiguous(), v.contiguous()),
                 "attention over strided KV-cache views (one decode query)", **tol(torch.float32, 2))


def test_large_scores_stay_finite(day, device, block):
    """Scores in the thousands: exp overflows unless the softmax subtracts the row max."""
    q, k, v = qkv(3, 3, 2, 1, 16, device=device, scale=1000.0)
    out = run_kernel(lambda: day.attention(q, k, v, block_size=block), "attention with large scores")
    assert_close(out, attention(q, k, v), "attention with large scores", **tol(torch.float32, 2))


def test_returns_new_tensor_and_leaves_inputs_alone(day, device, block):
    q, k, v = qkv(2, 3, 2, 1, 8, torch.float16, device)
    before = [t.clone() for t in (q, k, v)]
    out = day.attention(q, k, v, block_size=block)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device, \
        "attention must return [T, H, hd] in q's dtype on q's device"
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), before)), "attention must not modify q, k, v"


@pytest.mark.parametrize("shapes", [((2, 3, 8), (4, 2, 8), (4, 2, 8)), ((5, 4, 8), (3, 2, 8), (3, 2, 8)),
                                    ((2, 4, 8), (4, 2, 6), (4, 2, 6)), ((2, 4, 8), (4, 2, 8), (5, 2, 8)),
                                    ((2, 32), (4, 2, 16), (4, 2, 16))],
                         ids=["H%KV", "T>S", "head-size", "k-v-length", "2-D-q"])
def test_bad_shapes_raise_value_error(day, device, shapes):
    q, k, v = (torch.zeros(s, device=device) for s in shapes)
    with pytest.raises(ValueError):
        day.attention(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, S", [(512, 512), (1, 2048), (16, 1040)], ids=["prefill", "decode", "chunk"])
def test_smollm2_shapes(day, device, dtype, T, S):
    """SmolLM2-135M: 9 query heads, 3 KV heads, head_dim 64, default launch config."""
    q, k, v = qkv(T, S, 9, 3, 64, dtype, device)
    assert_close(day.attention(q, k, v), attention(q, k, v), f"attention T={T} S={S} {dtype}", **tol(dtype, 2))


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_against_reference(day, device):
    """A report, not a speed target. One block per (query row, head) re-reads K and V for every
    row, so this kernel is expected to be several times slower than the reference's cuBLAS
    matmuls on a 1024-token prefill (4.5x to 5.6x on an H100). It records both times and their ratio,
    plus decode shapes (T = 1, only H blocks: the lesson's "what to measure"), to
    build/bench/day_14_attention.json, and asserts that every output it timed is correct."""
    def timed(T, S):
        q, k, v = qkv(T, S, 9, 3, 64, torch.float16, device)
        assert_close(day.attention(q, k, v), attention(q, k, v), f"attention T={T} S={S} fp16 (the timed call)",
                     **tol(torch.float16, 2))
        ours, ref = cuda_time_ms(lambda: day.attention(q, k, v), 20), cuda_time_ms(lambda: attention(q, k, v), 20)
        return {"T": T, "S": S, "ours_ms": ours, "reference_ms": ref, "ratio": ours / ref}

    prefill = timed(1024, 1024)
    result = {"H": 9, "KV": 3, "hd": 64, "dtype": "fp16", **prefill,
              "decode": [timed(1, S) for S in (256, 2048, 8192)]}
    record_bench("day_14_attention", result)
