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
