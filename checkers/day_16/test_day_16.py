"""Day 16 checker: forward(weights, ids, positions, ops, attend) -> logits. Run: pytest checkers/day_16"""
import pytest
import torch

from shared.course.testing import assert_close

T_TINY = 8
# Tolerances against HF run in fp32 on the same weights (the lesson explains them):
# fp32 differs only in summation order; fp16 rounds every activation to ~3 decimal digits, 30 layers deep.
TINY_TOL = dict(atol=1e-4, rtol=1e-4)
SMOLLM2_TOL = {torch.float32: dict(atol=2e-3, rtol=2e-3), torch.float16: dict(atol=0.25, rtol=0.05)}


def load(ops, path, dtype, device):
    w = ops.load_model(path, dtype, device)
    w.inv_freq = ops.rope_frequencies(w.config).to(device)
    return w


def hf_logits(path, ids, device="cpu"):
    """Hugging Face LlamaForCausalLM, fp32, from the same directory: the oracle."""
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        return model(ids.long().to(device)[None]).logits[0].float()


def tiny_ids(vocab, device, T=T_TINY):
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (T,), generator=g, dtype=torch.int32).to(device)


def positions(start, n, device):
    return torch.arange(start, start + n, dtype=torch.int32, device=device)


@pytest.fixture(scope="module")
def tiny(tiny_model, ops, device):
    """(weights, ids, HF logits) for the seeded tiny Llama: GQA 4/2, tied embeddings, llama3 RoPE."""
    w = load(ops, tiny_model, torch.float32, device)
    ids = tiny_ids(w.config.vocab_size, device)
    return w, ids, hf_logits(tiny_model, ids.cpu())


@pytest.fixture(scope="module")
def reference_ops(track):
    """Every component from the PyTorch reference: the tests of forward's own logic stay fast
    in the simulator (the end-to-end test uses `ops`, i.e. your finished kernels)."""
    from shared import reference
    from shared.course.registry import Ops
    return Ops(track, overrides={n: getattr(reference, n) for n in reference.__all__})


def test_logits_match_hf_on_the_tiny_model(day, ops, device, tiny):
    """End to end through ops (your finished days' kernels), default attention."""
    w, ids, expected = tiny
    logits = day.forward(w, ids, positions(0, len(ids), device), ops)
    assert logits.dtype == torch.float32, f"forward must return fp32 logits, got {logits.dtype}"
    assert_close(logits, expected, "logits vs HF LlamaForCausalLM (tiny model, fp32)", **TINY_TOL)


def test_attend_hook_and_positions(day, reference_ops, device, tiny):
    """Prefill 5 tokens, then 3 more at positions 5..7 through an `attend` that keeps each layer's
    k, v (a KV cache in miniature): same logits as the whole sequence, so the positions reach
    RoPE and attend is called once per layer, in order, with q [T, H, hd] and k, v [T, KV, hd]."""
    w, ids, expected = tiny
    c, ops = w.config, reference_ops
    cache, calls = {}, []

    def attend(layer, q, k, v, pos):
        calls.append((layer, tuple(q.shape), tuple(k.shape), tuple(v.shape), pos.tolist()))
        if layer in cache:
            k, v = torch.cat([cache[layer][0], k]), torch.cat([cache[layer][1], v])
        cache[layer] = (k.clone(), v.clone())
        return ops.attention(q, k, v)

    split = 5
    first = day.forward(w, ids[:split], positions(0, split, device), ops, attend)
    want = [(i, (split, c.num_heads, c.head_dim), (split, c.num_kv_heads, c.head_dim),
             (split, c.num_kv_heads, c.head_dim), list(range(split))) for i in range(c.num_layers)]
    assert calls == want, f"attend calls {calls}, expected one per layer: {want}"
    calls.clear()
    rest = day.forward(w, ids[split:], positions(split, T_TINY - split, device), ops, attend)
    assert [cl[0] for cl in calls] == list(range(c.num_layers)), f"attend called for layers {[cl[0] for cl in calls]}"
    assert all(cl[4] == list(range(split, T_TINY)) for cl in calls), "attend must receive forward's positions"
    assert_close(first, expected[:split], "logits of the first 5 tokens", **TINY_TOL)
    assert_close(rest, expected[split:], "logits of tokens 5..7 at positions 5..7 (do positions reach rope?)",
                 **TINY_TOL)


def test_logits_are_fp32_for_fp16_weights(day, reference_ops, device, tiny_model):
    """Sampling and softmax want fp32: the logits are fp32 whatever the weights' dtype."""
    w = load(reference_ops, tiny_model, torch.float16, device)
    ids = tiny_ids(w.config.vocab_size, device, T=5)
    logits = day.forward(w, ids, positions(0, 5, device), reference_ops)
    assert logits.dtype == torch.float32, f"fp16 weights: forward must still return fp32 logits, got {logits.dtype}"


@pytest.mark.parametrize("pick", ["last", "slice", "index"])
def test_logits_at_scores_only_the_rows_asked_for(day, reference_ops, device, tiny, pick):
    """logits_at selects rows of the last hidden state before the final norm and the lm_head:
    the result equals those rows of the full logits, and the lm_head sees only them."""
    w, ids, expected = tiny
    T = len(ids)
    at = {"last": slice(-1, None), "slice": slice(2, 5),
          "index": torch.tensor([6, 0, 3], device=device)}[pick]
    rows = {"last": [T - 1], "slice": [2, 3, 4], "index": [6, 0, 3]}[pick]
    seen = []

    class Counting:
        def __getattr__(self, name):
            fn = getattr(reference_ops, name)
            if name != "linear":
                return fn
            def linear(x, weight):
                if weight is w.lm_head:
                    seen.append(x.shape[0])
                return fn(x, weight)
            return linear

    logits = day.forward(w, ids, positions(0, T, device), Counting(), logits_at=at)
    assert_close(logits, expected[rows], f"forward(..., logits_at={pick}) vs rows {rows} of HF's logits", **TINY_TOL)
    assert seen == [len(rows)], f"the lm_head multiplied {seen} rows; logits_at asked for {len(rows)}"


def test_bad_inputs_raise_value_error(day, reference_ops, device, tiny):
    w, ids, _ = tiny
    with pytest.raises(ValueError):
        day.forward(w, ids, positions(0, len(ids) - 1, device), reference_ops)
    with pytest.raises(ValueError):
        day.forward(w, ids[None], positions(0, len(ids), device)[None], reference_ops)


@pytest.mark.gpu
@pytest.mark.model
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_smollm2_matches_hf(day, ops, device, smollm2, dtype):
    """SmolLM2-135M (30 layers, 9/3 heads): logits close to HF's fp32, and the same greedy token."""
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(str(smollm2 / "tokenizer.json")).encode(
        "The capital of France is Paris. The capital of Germany is").ids
    ids = torch.tensor(ids, dtype=torch.int32, device=device)
    expected = hf_logits(smollm2, ids, device)
    w = load(ops, smollm2, dtype, device)
    logits = day.forward(w, ids, positions(0, len(ids), device), ops)
    assert logits.dtype == torch.float32, f"forward must return fp32 logits, got {logits.dtype}"
    assert_close(logits, expected, f"SmolLM2 logits vs HF fp32 ({dtype} weights)", **SMOLLM2_TOL[dtype])
    got, want = int(logits[-1].argmax()), int(expected[-1].argmax())
    assert got == want, f"greedy next token {got}, HF says {want} ({dtype})"
