"""The shared engine end to end: token-for-token parity with HF transformers, and the CLI."""
import subprocess
import sys

import pytest
import torch

from shared import REPO

PROMPTS = ["Deep learning is", "The cache holds", "héllo wörld 123"]


def _hf(model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _hf_greedy(hf, ids, n):
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      max_new_tokens=n, do_sample=False, pad_token_id=hf.config.pad_token_id)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def tiny_engine(tiny_model, track):
    from shared.engine import Engine
    return Engine(str(tiny_model), track=track, dtype="fp32")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tiny_greedy_tokens_equal_hf_generate(tiny_engine, tiny_model, prompt):
    hf = _hf(tiny_model)
    ids = tiny_engine.prompt_ids(prompt)
    ours = list(tiny_engine.generate_ids(ids, max_new_tokens=24))
    assert ours == _hf_greedy(hf, ids, 24), f"greedy tokens differ from HF generate for {prompt!r}"


def test_tiny_logits_match_hf(tiny_engine, tiny_model):
    ids = tiny_engine.prompt_ids("logits, please")
    ours = tiny_engine.forward(ids)
    theirs = _hf(tiny_model)(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours.cpu(), theirs, atol=1e-4, rtol=1e-4)


def test_cache_and_recompute_agree(tiny_model, track):
    from shared.engine import Engine
    ids = [5, 70, 71, 72, 9]
    cached = list(Engine(str(tiny_model), track=track, dtype="fp32").generate_ids(ids, max_new_tokens=12))
    plain = list(Engine(str(tiny_model), track=track, dtype="fp32", use_cache=False).generate_ids(ids, max_new_tokens=12))
    assert cached == plain


@pytest.mark.model
def test_smollm2_greedy_equals_hf(smollm2, track):
    from shared.engine import Engine
    engine = Engine(str(smollm2), track=track, dtype="fp32")
    hf = _hf(smollm2)
    for prompt in PROMPTS:
        ids = engine.prompt_ids(prompt)
        assert list(engine.generate_ids(ids, max_new_tokens=32)) == _hf_greedy(hf, ids, 32), prompt


@pytest.mark.gpu
@pytest.mark.model
def test_smollm2_fp16_greedy_equals_hf_fp16(smollm2, track):
    """fp16 on both sides, on the GPU: the whole engine (flash prefill, split-KV or paged decode,
    CUDA graphs) against HF's fp16 eager model, token for token."""
    from shared.engine import Engine
    from transformers import AutoModelForCausalLM
    engine = Engine(str(smollm2), track=track, dtype="fp16")
    hf = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float16, attn_implementation="eager").cuda().eval()
    for prompt in PROMPTS:
        ids = engine.prompt_ids(prompt)
        out = hf.generate(torch.tensor([ids], device="cuda"), attention_mask=torch.ones(1, len(ids), dtype=torch.long,
                          device="cuda"), max_new_tokens=32, do_sample=False, pad_token_id=hf.config.pad_token_id)
        assert list(engine.generate_ids(ids, max_new_tokens=32)) == out[0, len(ids):].tolist(), prompt


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_cli_status_lists_sixty_days():
    r = _cli("status")
    assert r.returncode == 0, r.stderr
    assert sum(1 for line in r.stdout.splitlines() if line[:6].strip().isdigit()) == 60
    assert "reference (PyTorch)" in r.stdout or "day_" in r.stdout


@pytest.mark.parametrize("args", [("hint", "99"), ("check", "abc"), ("diff", "61"), ("hint", "60"),
                                  ("generate", "hi", "--model", "/no/such/dir"), ("reset", "0")])
def test_cli_bad_input_is_one_line_and_exit_2(args):
    r = _cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tinyinfer: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_cli_generate_tiny(tiny_model):
    r = _cli("generate", "Deep learning is", "--model", str(tiny_model), "--max-new-tokens", "8", "--stream")
    assert r.returncode == 0, r.stderr
    assert "decode" in r.stderr and "tok/s" in r.stderr


# ---- the decode path is capture-safe (shared/DESIGN.md, "capture-safe") ---------------------------------
def _decode_once(engine, prompt_ids):
    """Prefill eagerly, then return a function that runs one decode step (the same one each call)."""
    runner = engine.runner(len(prompt_ids) + 4)
    runner.reset()
    first = int(engine.ops.sample(runner.next_logits(prompt_ids)))
    ids = prompt_ids + [first]

    def step():
        runner.cached = len(prompt_ids)           # the cache holds the prompt: feed one token
        return runner.next_logits(ids)
    return step


def test_decode_step_reads_nothing_back_to_the_host(tiny_model, track):
    """Every component the track resolves, on the decode path, with .item()/int()/.tolist()/.cpu()/
    bool() made to raise: what a CUDA graph capture forbids (the simulator has no sync-debug mode).
    The GEMVs (`linear`, day 54's `norm_linear` / `linear_add`) are the reference here only because
    a simulated GEMV of every weight takes minutes; days 11 and 54 run the learner's under the
    same guard."""
    from shared import reference
    from shared.course.testing import no_host_reads
    from shared.engine import Engine
    engine = Engine(str(tiny_model), track=track, dtype="fp32", simulate=True)
    for name in ("linear", "norm_linear", "linear_add"):
        engine.ops._cache[name] = getattr(reference, name)
    assert engine.use_cache, "the decode step under test is the cached one"
    step = _decode_once(engine, [5, 70])          # short: every kernel runs in the simulator
    with no_host_reads():
        logits = step()
    assert logits.shape == (engine.config.vocab_size,) and torch.isfinite(logits).all()


@pytest.mark.gpu
@pytest.mark.parametrize("kv_int8", [False, True], ids=["kv", "kv_int8"])
@pytest.mark.parametrize("components", ["track", "reference"])
def test_decode_step_never_syncs_on_the_gpu(tiny_model, track, components, kv_int8):
    """torch's sync-debug mode raises on any host sync: one decode step of every resolved component
    (and of the PyTorch reference, which the days track runs until a day is finished); with the
    int8 KV cache (day 44's Int8PagedCache, or the reference's) too."""
    from shared import reference
    from shared.course.registry import Ops
    from shared.engine import Engine
    engine = Engine(str(tiny_model), track=track, dtype="fp16", graphs=False)
    if components == "reference":
        engine.ops = Ops(track, overrides={n: getattr(reference, n) for n in reference.__all__})
        engine._runners.clear()
    engine.use_cache = True
    if kv_int8:
        engine.kv_int8 = engine.use_paged = True      # the int8 backend from these ops (reference until day 44)
        engine._runners.clear()
    step = _decode_once(engine, engine.prompt_ids("capture-safe"))
    step()                                    # compile outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits).all()


def test_sampling_flags_are_checked_before_anything_runs(tiny_engine):
    for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=-4), dict(top_p=0.0),
                dict(top_p=5.0), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            tiny_engine.generate_ids([5, 6], **bad)


def test_out_of_range_prompt_ids_are_refused_on_the_host(tiny_engine):
    with pytest.raises(ValueError, match="out of range"):
        tiny_engine.generate_ids([5, tiny_engine.config.vocab_size, 6])


def test_logits_at_computes_only_the_rows_asked_for(tiny_engine):
    ids = tiny_engine.prompt_ids("logits, please")
    full = tiny_engine.forward(ids)
    from shared.engine.attention import NoCache
    from shared.engine.runner import ModelRunner
    last = ModelRunner(tiny_engine.ops, tiny_engine.weights, NoCache(tiny_engine.ops), tiny_engine.device).forward(
        ids, 0, logits_at=slice(-1, None))
    assert last.shape == (1, full.shape[1])
    torch.testing.assert_close(last[0], full[-1], atol=1e-5, rtol=1e-5)
