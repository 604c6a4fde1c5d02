"""Day 18 checker: generate (the decode loop). Run: pytest checkers/day_18"""
from functools import lru_cache

import pytest
import torch

from shared import reference
from shared.course.registry import Ops

PROMPTS = [[1, 72, 101, 108, 108, 111], [1, 200], [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]]


# ---- the real thing: greedy on the tiny Llama vs Hugging Face ----------------------------------
@lru_cache(maxsize=2)
def reference_model(model_dir):
    ops = Ops("solutions", overrides={n: getattr(reference, n) for n in reference.__all__})
    weights = reference.load_model(model_dir)
    weights.inv_freq = reference.rope_frequencies(weights.config)
    return ops, weights


@lru_cache(maxsize=2)
def hf_model(model_dir):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def reference_next_logits(model_dir):
    """Prefix recompute with the PyTorch reference forward (every op the reference's)."""
    ops, weights = reference_model(model_dir)
    calls = []

    def next_logits(ids):
        calls.append(list(ids))
        with torch.inference_mode():
            return reference.forward(weights, torch.tensor(ids), torch.arange(len(ids)), ops)[-1]
    return next_logits, calls


def hf_greedy(model_dir, prompt, max_new_tokens, eos):
    from transformers import GenerationConfig
    model = hf_model(model_dir)
    pad = eos[0] if isinstance(eos, list) else 0 if eos is None else eos
    cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             generation_config=cfg)
    return out[0, len(prompt):].tolist()


def greedy(logits):
    return reference.sample(logits)


def check_same(got, want, what):
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise AssertionError(f"{what}: first difference at new token {first}\n  yours: {got}\n  HF:    {want}")


@pytest.mark.parametrize("prompt", PROMPTS, ids=["hello", "one_token", "long"])
def test_greedy_matches_hf_generate(day, tiny_model, prompt):
    """20 greedy tokens with the model's own EOS id, exactly as transformers' generate()."""
    eos = reference.load_config(tiny_model).eos_token_ids
    next_logits, calls = reference_next_logits(tiny_model)
    got = list(day.generate(next_logits, prompt, max_new_tokens=20, eos_token_ids=eos, sample=greedy))
    check_same(got, hf_greedy(tiny_model, prompt, 20, list(eos)), f"generate(prompt={prompt})")
    assert calls[0] == prompt, f"the first next_logits call must get the prompt {prompt}, got {calls[0]}"


def test_eos_stops_like_hf(day, tiny_model):
    """Make a token that greedy decoding reaches at step 6 the EOS: both must stop right after it."""
    prompt = PROMPTS[0]
    free = hf_greedy(tiny_model, prompt, 12, None)
    eos = free[6]
    want = hf_greedy(tiny_model, prompt, 12, eos)
    assert want[-1] == eos and len(want) < 12, "test setup: HF should have stopped on the chosen EOS"
    next_logits, _ = reference_next_logits(tiny_model)
    got = list(day.generate(next_logits, prompt, max_new_tokens=12, eos_token_ids=[eos], sample=greedy))
    check_same(got, want, f"generate with eos_token_ids=[{eos}]")


# ---- the loop's contract with scripted logits --------------------------------------------------
class Script:
    """next_logits that forces a scripted token sequence, recording every call."""

    def __init__(self, tokens, vocab=16):
        self.tokens, self.vocab, self.calls = list(tokens), vocab, []

    def __call__(self, ids):
        self.calls.append(list(ids))
        logits = torch.zeros(self.vocab)
        logits[self.tokens[len(self.calls) - 1]] = 5.0
        return logits


def test_eos_is_yielded_then_the_loop_stops(day):
    script = Script([4, 5, 9, 6, 7, 8])
    prompt = [1, 2]
    got = list(day.generate(script, prompt, max_new_tokens=6, eos_token_ids=[9], sample=greedy))
    assert got == [4, 5, 9], f"with EOS 9 at step 3 expected [4, 5, 9] (EOS included, nothing after), got {got}"
    assert len(script.calls) == 3, f"next_logits was called {len(script.calls)} times; after EOS it must not be called"
    assert script.calls == [[1, 2], [1, 2, 4], [1, 2, 4, 5]], \
        f"next_logits must get the prompt plus the tokens so far; calls were {script.calls}"


def test_max_new_tokens_is_respected(day):
    for n in (1, 3, 7):
        script = Script([3] * 10)
        got = list(day.generate(script, [1], max_new_tokens=n, eos_token_ids=[2], sample=greedy))
        assert got == [3] * n, f"max_new_tokens={n}: expected {n} tokens, got {got}"
        assert len(script.calls) == n, f"max_new_tokens={n}: next_logits called {len(script.calls)} times"


def test_zero_new_tokens_computes_nothing(day):
    script = Script([3])
    assert list(day.generate(script, [1, 2], max_new_tokens=0, sample=greedy)) == [], "max_new_tokens=0 yields nothing"
    assert not script.calls, "max_new_tokens=0 must not call next_logits"


def test_streams_one_token_at_a_time(day):
    """A generator: the first token comes out before the second is computed."""
    script = Script([3, 4, 5])
    it = day.generate(script, [1], max_new_tokens=3, sample=greedy)
    assert not script.calls, "calling generate() must not compute anything yet (make it a generator: yield)"
    first = next(it)
    assert first == 3 and isinstance(first, int), f"first token: expected the Python int 3, got {first!r}"
    assert len(script.calls) == 1, f"after one token next_logits ran {len(script.calls)} times (yield each token)"


def test_several_eos_ids_from_a_one_shot_iterator(day):
    """eos_token_ids may be any iterable, e.g. a generator that can be read only once."""
    script = Script([4, 5, 7, 6])
    got = list(day.generate(script, [1], max_new_tokens=4, eos_token_ids=iter([9, 7]), sample=greedy))
    assert got == [4, 5, 7], f"EOS ids (9, 7): expected to stop after 7 -> [4, 5, 7], got {got}"


def test_prompt_list_is_not_modified_and_sample_gets_the_logits(day):
    seen = []

    def spy(logits):
        seen.append(logits)
        return torch.tensor(2)
    prompt = [1, 5]
    script = Script([0, 0])
    out = list(day.generate(script, prompt, max_new_tokens=2, sample=spy))
    assert out == [2, 2], f"the tokens must be what `sample` returns, got {out}"
    assert prompt == [1, 5], f"generate must not grow the caller's prompt list (got {prompt})"
    assert len(seen) == 2 and seen[0].shape == (16,), "sample must receive next_logits' [vocab] logits"
    assert script.calls[1] == [1, 5, 2], f"the sampled token must be appended before the next call, got {script.calls[1]}"


# ---- the real model, when prepared ----------------------------------------------------------
@pytest.mark.model
def test_greedy_matches_hf_on_smollm2(day, smollm2):
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308]
    eos = reference.load_config(smollm2).eos_token_ids
    next_logits, _ = reference_next_logits(smollm2)
    got = list(day.generate(next_logits, prompt, max_new_tokens=12, eos_token_ids=eos, sample=greedy))
    check_same(got, hf_greedy(smollm2, prompt, 12, list(eos)), "generate on SmolLM2")
