"""Day 12 checker: rope_frequencies and rope (HF rotate-half RoPE). Run: pytest checkers/day_12"""
import pytest
import torch

from shared.config import ModelConfig, RopeScaling
from shared.reference import rope as reference_rope
from shared.course.testing import assert_close, randn, tol

DTYPES = [torch.float32, torch.float16]

# name: (hidden, heads, kv_heads, head_dim, theta, llama3 scaling or None, max positions)
CONFIGS = {
    "smollm2-135m": (576, 9, 3, 64, 100000.0, None, 8192),
    "llama-3.2-1b": (2048, 32, 8, 64, 500000.0, dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                     original_max_position_embeddings=8192), 131072),
}
# Arbitrary positions (not 0..T-1), odd T; for Llama also past original_max_position_embeddings=8192.
POSITIONS = {"smollm2-135m": [5, 9, 100, 0, 2047], "llama-3.2-1b": [8191, 8192, 9000, 3, 100000]}


def configs(name):
    """The same model described twice: our ModelConfig and transformers' LlamaConfig."""
    from transformers import LlamaConfig
    hidden, heads, kv, hd, theta, scaling, max_pos = CONFIGS[name]
    ours = ModelConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=4 * hidden, num_layers=1,
                       num_heads=heads, num_kv_heads=kv, head_dim=hd, rms_norm_eps=1e-5, rope_theta=theta,
                       max_position_embeddings=max_pos, tie_word_embeddings=True,
                       rope_scaling=RopeScaling(**scaling) if scaling else None)
    rope_parameters = dict(rope_type="llama3", rope_theta=theta, **scaling) if scaling else \
        dict(rope_type="default", rope_theta=theta)
    hf = LlamaConfig(vocab_size=1000, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                     head_dim=hd, max_position_embeddings=max_pos, rope_parameters=rope_parameters)
    return ours, hf


def hf_rope(hf_config, q, k, positions):
    """transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb on [T, heads, hd] tensors (CPU)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    rotary = LlamaRotaryEmbedding(hf_config)
    qh, kh = q.cpu().transpose(0, 1)[None], k.cpu().transpose(0, 1)[None]     # [1, heads, T, hd]
    cos, sin = rotary(qh, positions.cpu().long()[None])
    q_out, k_out = apply_rotary_pos_emb(qh, kh, cos, sin, unsqueeze_dim=1)
    return q_out[0].transpose(0, 1), k_out[0].transpose(0, 1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_frequencies_match_hf_bit_for_bit(day, name):
    """inv_freq must be HF's fp32 values exactly: at position 100000 one ulp is ~0.01 rad."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    ours, hf = configs(name)
    inv_freq = day.rope_frequencies(ours)
    expected = LlamaRotaryEmbedding(hf).inv_freq
    assert inv_freq.dtype == torch.float32, f"rope_frequencies must return float32, got {inv_freq.dtype}"
    assert_close(inv_freq.cpu(), expected, f"rope_frequencies ({name})", atol=0, rtol=0)


def test_frequencies_of_the_tiny_model(day, tiny_model):
    """The tiny Llama's own config (llama3 scaling with an original context of 32)."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from shared.reference import load_config
    expected = LlamaRotaryEmbedding(AutoConfig.from_pretrained(tiny_model)).inv_freq
    assert_close(day.rope_frequencies(load_config(tiny_model)).cpu(), expected, "rope_frequencies (tiny model)",
                 atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_rope_matches_hf(day, sizes, device, name, dtype):
    """q and k rotated in place at arbitrary positions, compared with transformers' rotary code."""
    ours, hf = configs(name)
    heads, kv = sizes(tiny=(2, 1), real=(ours.num_heads, ours.num_kv_heads))
    positions = torch.tensor(POSITIONS[name], dtype=torch.int32)
    T, hd = len(positions), ours.head_dim
    q = randn(T, heads, hd, dtype=dtype, device=device, seed=1)
    k = randn(T, kv, hd, dtype=dtype, device=device, seed=2)
    q_hf, k_hf = hf_rope(hf, q, k, positions)
    q_ref, k_ref = q.clone(), k.clone()
    reference_rope(q_ref, k_ref, positions.to(device), day.rope_frequencies(ours).to(device))
    result = day.rope(q, k, positions.to(device), day.rope_frequencies(ours).to(device))
    assert result is None, "rope works in place and returns None"
    # fp32 math, one rounding: tight against our reference; HF rounds cos/sin to fp16 first, so
    # against HF fp16 allows a few fp16 ulps.
    for got, ref, want, what in ((q, q_ref, q_hf, "q"), (k, k_ref, k_hf, "k")):
        assert_close(got, ref, f"rope {what} ({name}, {dtype}, positions {POSITIONS[name]})", **tol(dtype, scale=2))
        assert_close(got, want, f"rope {what} vs HF ({name}, {dtype})", **tol(dtype, scale=8 if dtype == torch.float16 else 2))


@pytest.mark.parametrize("block_size", [16, 64])
def test_block_sizes_and_a_small_head_dim(day, device, block_size):
    """head_dim 16 (8 pairs): a block of 16 or 64 threads has more threads than pairs; head_dim 64
    with 16 threads makes each thread rotate two pairs."""
    for hd in (16, 64):
        positions = torch.tensor([7, 3, 1000], dtype=torch.int32, device=device)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        q, k = randn(3, 2, hd, device=device, seed=hd), randn(3, 1, hd, device=device, seed=hd + 1)
        q_ref, k_ref = q.clone(), k.clone()
        reference_rope(q_ref, k_ref, positions, inv_freq.to(device))
        day.rope(q, k, positions, inv_freq.to(device), block_size=block_size)
        assert_close(q, q_ref, f"rope q head_dim={hd} block_size={block_size}", **tol(torch.float32, scale=2))
        assert_close(k, k_ref, f"rope k head_dim={hd} block_size={block_size}", **tol(torch.float32, scale=2))


def test_position_zero_is_the_identity_and_int64_positions(day, device):
    """At position 0 every angle is 0: q and k come back unchanged (int64 positions accepted)."""
    q, k = randn(1, 2, 16, device=device, seed=3), randn(1, 1, 16, device=device, seed=4)
    q0, k0 = q.clone(), k.clone()
    day.rope(q, k, torch.zeros(1, dtype=torch.int64, device=device), torch.rand(8, device=device))
    assert_close(q, q0, "rope at position 0 (q)", atol=0, rtol=0)
    assert_close(k, k0, "rope at position 0 (k)", atol=0, rtol=0)


@pytest.mark.parametrize("case", ["head dims differ", "odd head_dim", "positions length", "inv_freq length"])
def test_bad_inputs_raise_value_error(day, device, case):
    T, hd = 2, 8
    q, k = torch.zeros(T, 2, hd, device=device), torch.zeros(T, 1, hd, device=device)
    positions, inv_freq = torch.arange(T, dtype=torch.int32, device=device), torch.ones(hd // 2, device=device)
    if case == "head dims differ":
        k = torch.zeros(T, 1, hd + 2, device=device)
    elif case == "odd head_dim":
        q, k, inv_freq = q[..., :7], k[..., :7], inv_freq[:3]
    elif case == "positions length":
        positions = positions[:1]
    else:
        inv_freq = torch.ones(hd, device=device)
    with pytest.raises(ValueError):
        day.rope(q, k, positions, inv_freq)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CONFIGS))
def test_long_prefill_real_heads_fp16(day, device, name):
    """4096 tokens, all heads, positions far out (up to 131071 for Llama)."""
    ours, hf = configs(name)
    T = 4096
    positions = torch.randint(0, ours.max_position_embeddings, (T,), dtype=torch.int32,
                              generator=torch.Generator().manual_seed(0))
    q = randn(T, ours.num_heads, ours.head_dim, dtype=torch.float16, device=device, seed=5)
    k = randn(T, ours.num_kv_heads, ours.head_dim, dtype=torch.float16, device=device, seed=6)
    inv_freq = day.rope_frequencies(ours).to(device)
    q_ref, k_ref = q.clone(), k.clone()
    reference_rope(q_ref, k_ref, positions.to(device), inv_freq)
    day.rope(q, k, positions.to(device), inv_freq)
    assert_close(q, q_ref, f"rope q {name} T={T} fp16", **tol(torch.float16, scale=2))
    assert_close(k, k_ref, f"rope k {name} T={T} fp16", **tol(torch.float16, scale=2))
