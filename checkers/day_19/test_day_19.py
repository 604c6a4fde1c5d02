"""Day 19 checker: KVCache and the kv_write kernel. Run: pytest checkers/day_19"""
import pytest
import torch

from shared import reference
from shared.course.registry import Ops
from shared.course.testing import cuda_time_ms, assert_close, randn, record_bench


def positions_tensor(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def check_write(day, kv, max_seq, hd, positions, dtype, device, k_dtype=None, **launch):
    """Random caches (so a write to the wrong place shows), your kv_write vs the reference."""
    T = len(positions)
    k_cache = randn(kv, max_seq, hd, dtype=dtype, device=device, seed=1)
    v_cache = randn(kv, max_seq, hd, dtype=dtype, device=device, seed=2)
    k = randn(T, kv, hd, dtype=k_dtype or dtype, device=device, seed=3)
    v = randn(T, kv, hd, dtype=k_dtype or dtype, device=device, seed=4)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    pos = positions_tensor(positions, device)
    reference.kv_write(want_k, want_v, k, v, pos)
    result = day.kv_write(k_cache, v_cache, k, v, pos, **launch)
    assert result is None, "kv_write writes the caches in place and returns None"
    what = f"kv_write T={T} KV={kv} hd={hd} positions={positions[:4]}{'...' if T > 4 else ''} {dtype}"
    assert_close(k_cache, want_k, f"k_cache after {what}", atol=0, rtol=0)
    assert_close(v_cache, want_v, f"v_cache after {what}", atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_prefill_write_matches_reference(day, sizes, device, dtype, block_size):
    """T tokens at positions that do not start at 0, odd head_dim, 3 KV heads."""
    kv, max_seq, hd, start, T = sizes(tiny=(3, 24, 17, 5, 6), real=(3, 2048, 64, 100, 512))
    check_write(day, kv, max_seq, hd, list(range(start, start + T)), dtype, device, block_size=block_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_token_append(day, sizes, device, dtype):
    kv, max_seq, hd = sizes(tiny=(2, 20, 9), real=(3, 2048, 64))
    for pos in (0, 11, max_seq - 1):
        check_write(day, kv, max_seq, hd, [pos], dtype, device, block_size=32)


def test_scattered_positions_and_fp32_into_fp16(day, device):
    """Positions in any order; k, v in fp32 stored into an fp16 cache (cast like the reference)."""
    check_write(day, 2, 30, 5, [17, 3, 29, 0, 8], torch.float32, device, block_size=32)
    check_write(day, 1, 12, 7, [4, 2], torch.float16, device, k_dtype=torch.float32, block_size=32)


def test_writes_only_its_layer_of_a_kvcache(day, device):
    """kv_write gets one layer's view cache.k[l]: the other layers must not change."""
    cache = day.KVCache(3, 2, 16, 8, torch.float32, device)
    cache.k.copy_(randn(3, 2, 16, 8, device=device, seed=5))
    cache.v.copy_(randn(3, 2, 16, 8, device=device, seed=6))
    want_k, want_v = cache.k.clone(), cache.v.clone()
    k, v = randn(4, 2, 8, device=device, seed=7), randn(4, 2, 8, device=device, seed=8)
    pos = positions_tensor([6, 7, 8, 9], device)
    reference.kv_write(want_k[1], want_v[1], k, v, pos)
    day.kv_write(cache.k[1], cache.v[1], k, v, pos, block_size=32)
    assert_close(cache.k, want_k, "KVCache.k after writing layer 1", atol=0, rtol=0)
    assert_close(cache.v, want_v, "KVCache.v after writing layer 1", atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kvcache_layout(day, device, dtype):
    cache = day.KVCache(2, 3, 40, 16, dtype, device)
    for name in ("k", "v"):
        t = getattr(cache, name)
        assert tuple(t.shape) == (2, 3, 40, 16), f"KVCache.{name} must be [layers, kv_heads, max_seq, head_dim] = " \
                                                 f"(2, 3, 40, 16), got {tuple(t.shape)}"
        assert t.dtype == dtype and t.device.type == torch.device(device).type, f"KVCache.{name}: {t.dtype} on {t.device}"
        assert t.is_contiguous() and not t.any(), f"KVCache.{name} must start contiguous and zeroed"
    assert cache.k.data_ptr() != cache.v.data_ptr(), "k and v must be separate tensors"
    assert cache.max_seq == 40 and cache.length == 0, "a new cache has max_seq set and length 0"


def test_reserve_raises_with_the_limit_in_the_message(day, device):
    cache = day.KVCache(1, 1, 12, 4, torch.float32, device)
    cache.reserve(12)                              # exactly full is fine
    cache.length = 10
    cache.reserve(2)
    with pytest.raises(ValueError, match="12"):
        cache.reserve(3)


@pytest.mark.parametrize("block_size", [32, 128])
def test_positions_outside_the_cache_are_skipped(day, device, block_size):
    """The docstring's promise: a position < 0 or >= max_seq is not written (a GPU would write
    into the next head's rows, or another buffer). Only the valid positions change."""
    kv, max_seq, hd = 2, 10, 8
    k_cache = randn(kv, max_seq, hd, device=device, seed=21)
    v_cache = randn(kv, max_seq, hd, device=device, seed=22)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    k, v = randn(4, kv, hd, device=device, seed=23), randn(4, kv, hd, device=device, seed=24)
    day.kv_write(k_cache, v_cache, k, v, positions_tensor([-1, max_seq, 3, max_seq + 5], device), block_size=block_size)
    want_k[:, 3], want_v[:, 3] = k[2], v[2]
    assert_close(k_cache, want_k, "k_cache after writing positions [-1, max_seq, 3, max_seq+5]: only 3 is valid",
                 atol=0, rtol=0)
    assert_close(v_cache, want_v, "v_cache after writing positions [-1, max_seq, 3, max_seq+5]", atol=0, rtol=0)


@pytest.mark.parametrize("case", ["k_heads", "k_head_dim_larger", "k_head_dim_smaller", "v_head_dim", "positions",
                                  "cache_shapes"])
def test_bad_shapes_raise_value_error(day, device, case):
    """Every shape mismatch is refused before the launch. A k whose head_dim differs from the
    cache's would write past each cache row (larger) or leave part of it stale (smaller)."""
    kc, vc = torch.zeros(2, 8, 4, device=device), torch.zeros(2, 8, 4, device=device)
    k, v = torch.zeros(3, 2, 4, device=device), torch.zeros(3, 2, 4, device=device)
    pos = positions_tensor([0, 1, 2], device)
    if case == "k_heads":
        k = v = torch.zeros(3, 3, 4, device=device)
    elif case == "k_head_dim_larger":
        k = v = torch.zeros(3, 2, 6, device=device)
    elif case == "k_head_dim_smaller":
        k = v = torch.zeros(3, 2, 3, device=device)
    elif case == "v_head_dim":
        v = torch.zeros(3, 2, 3, device=device)
    elif case == "positions":
        pos = positions_tensor([0, 1], device)
    else:
        vc = torch.zeros(2, 9, 4, device=device)
    with pytest.raises(ValueError) as e:
        day.kv_write(kc, vc, k, v, pos)
        pytest.fail(f"kv_write accepted bad shapes ({case}): raise ValueError before launching")
    assert "\n" not in str(e.value).strip(), f"error messages are one line, got {str(e.value)!r}"


# ---- the cache in a real decode: equal to Hugging Face's past_key_values ------------------------
def hf_cache_tensors(past, layer):
    """transformers 5: DynamicCache.layers[i].keys / .values, [batch, KV, S, hd]."""
    if hasattr(past, "layers"):
        return past.layers[layer].keys[0], past.layers[layer].values[0]
    return past[layer][0][0], past[layer][1][0]      # older tuple-style caches


def test_cache_equals_hf_past_key_values(day, tiny_model, device):
    """Prefill 7 tokens, then 6 greedy steps, writing through YOUR kv_write and attending over the
    cache: the cache must hold what HF's DynamicCache holds, and the tokens must agree."""
    from transformers import LlamaForCausalLM
    from shared.engine.attention import StaticCache
    from shared.engine.runner import ModelRunner
    ops = Ops("solutions", overrides={**{n: getattr(reference, n) for n in reference.__all__},
                                      "KVCache": day.KVCache, "kv_write": day.kv_write})
    w = reference.load_model(tiny_model, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    c = w.config
    backend = StaticCache(ops, c, 32, torch.float32, device)      # the engine's cache backend, your pieces
    cache, runner = backend.kv, ModelRunner(ops, w, backend, device)
    seen = []

    def next_logits(new_ids):
        seen.extend(new_ids)
        return runner.next_logits(list(seen))

    hf = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompt = [1, 84, 104, 101, 32, 75, 86]
    with torch.inference_mode():
        out = hf(torch.tensor([prompt]), use_cache=True)
    mine = next_logits(prompt)

    def compare(step):
        S = cache.length
        for layer in range(c.num_layers):
            hk, hv = hf_cache_tensors(out.past_key_values, layer)
            assert hk.shape[1] == S, f"test setup: HF cache has {hk.shape[1]} positions, yours {S}"
            assert_close(cache.k[layer, :, :S], hk, f"keys of layer {layer} after {step}", atol=1e-4, rtol=1e-4)
            assert_close(cache.v[layer, :, :S], hv, f"values of layer {layer} after {step}", atol=1e-4, rtol=1e-4)
    compare("the prefill")
    for step in range(6):
        want = int(out.logits[0, -1].argmax())
        got = int(reference.sample(mine))
        assert got == want, f"greedy token {step}: yours {got}, HF {want} (the cache feeds attention: check kv_write)"
        with torch.inference_mode():
            out = hf(torch.tensor([[want]]), past_key_values=out.past_key_values, use_cache=True)
        mine = next_logits([got])
        compare(f"decode step {step + 1}")


# ---- GPU: speed of the write vs torch indexing -----------------------------------------------
@pytest.mark.gpu
@pytest.mark.bench
def test_bench_kv_write_vs_torch_indexing(day, device):
    """A report, not a target: your kernel's time against torch's indexed assignment (recorded in
    build/bench/day_19_kv_write.json). What it asserts is that the timed writes were right."""
    kv, max_seq, hd = 3, 2048, 64
    kc = torch.zeros(kv, max_seq, hd, dtype=torch.float16, device=device)
    vc = torch.zeros_like(kc)

    def ms(fn, reps=200):
        return cuda_time_ms(fn, reps)

    result = {}
    for T, start in ((512, 0), (1, 700)):
        k = randn(T, kv, hd, dtype=torch.float16, device=device, seed=T)
        pos = torch.arange(start, start + T, dtype=torch.int32, device=device)
        result[f"kv_write_T{T}_ms"] = ms(lambda: day.kv_write(kc, vc, k, k, pos))
        result[f"torch_index_T{T}_ms"] = ms(lambda: reference.kv_write(kc, vc, k, k, pos))
        want_k, want_v = kc.clone(), vc.clone()
        reference.kv_write(want_k, want_v, k, k, pos)
        day.kv_write(kc, vc, k, k, pos)
        assert_close(kc, want_k, f"k_cache after the timed kv_write T={T}", atol=0, rtol=0)
    record_bench("day_19_kv_write", result)
