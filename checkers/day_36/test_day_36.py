"""Day 36 checker: a draft model with its own cache (ModelDraft, self_draft). Run: pytest checkers/day_36

The self-draft IS the target's first L layers + its final norm and head: the very same tensors.
A draft call returns the draft model's greedy tokens after the context, however the context
moved since the last call (drafts accepted, rejected, a new prompt), and afterwards its cache is
what a fresh draft holds after a prefill of the context + all drafts but the last -- keys,
values, the length on the host and the device -- having fed only what its cache lacked. With
day 35's loop the output is plain greedy decoding's at every depth; at full depth the draft is
the target, so every draft is accepted (a wrong catch-up or rollback shows as a rejection).
EOS and max_new_tokens inside an accepted run stop exactly there. The engine and the CLI run it
as `speculative="draft"` / `--speculative draft`. Sim tier: the tiny model (2 layers) with the
reference kernels, caches, Verifier and loop, and YOUR drafter. GPU: the track's components and
SmolLM2 (fp32 token for token, fp16 speed by depth).
"""
import json
import math
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from shared import REPO, reference
from shared.course.registry import Ops
from shared.course.testing import assert_cli_refuses, assert_close, record_bench
from shared.engine.attention import NoCache, StaticCache
from shared.engine.runner import ModelRunner

PROMPT = [72, 101, 108, 108, 111, 44, 32, 100, 114, 97, 102, 116, 33, 32] * 2 + [7]   # 29 tokens
N = 16                                       # new tokens per generation


@pytest.fixture(scope="module")
def vops(ops, sizes):
    """In the simulator: reference kernels, Verifier, caches and loop (a simulated GEMV of every
    weight takes minutes). On a GPU: every component from the track."""
    return Ops(ops.track, overrides=sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={}))


@pytest.fixture(scope="module")
def weights(tiny_model, device):
    w = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return w


def first_layers(w, L):
    """The checker's own self-draft: what the day must build (without checking how)."""
    return replace(w, config=replace(w.config, num_layers=L), layers=w.layers[:L])


class Counting:
    """The ops, with forward counting the tokens it is fed: a draft feeds only what its cache lacks."""

    def __init__(self, ops):
        self.ops, self.fed = ops, 0

    def __getattr__(self, name):
        return self._forward if name == "forward" else getattr(self.ops, name)

    def _forward(self, weights, ids, positions, ops, attend=None, logits_at=None):
        self.fed += ids.shape[0]
        return self.ops.forward(weights, ids, positions, ops, attend, logits_at=logits_at)


def static_runner(ops, w, device, max_len=96):
    return ModelRunner(ops, w, StaticCache(ops, w.config, max_len, torch.float32, device), device)


def greedy(vops, w, device, context, k):
    """The oracle: the draft model's k greedy tokens after context, from an empty cache."""
    r = static_runner(vops, w, device, max_len=len(context) + k + 8)
    return list(reference.generate(r.next_logits, list(context), max_new_tokens=k, sample=reference.sample))


def fresh_kv(vops, w, device, tokens):
    """What a fresh draft's cache holds after a prefill of tokens: per layer (k, v) [n, KV, hd]."""
    r = static_runner(vops, w, device, max_len=len(tokens) + 8)
    r.forward(list(tokens), 0)
    n = len(tokens)
    return [(r.backend.kv.k[i][:, :n].transpose(0, 1), r.backend.kv.v[i][:, :n].transpose(0, 1))
            for i in range(w.config.num_layers)]


def assert_cache_like_fresh(vops, w, device, draft, tokens, what):
    """The draft's cache holds exactly `tokens`, as a fresh draft fed them in one prefill would."""
    r, n = draft.runner, len(tokens)
    kv = r.backend.kv
    assert draft.tokens == list(tokens), f"{what}: draft.tokens is {draft.tokens}, the cache must hold {list(tokens)} " \
                                         "(the context + every draft but the last)"
    assert (r.cached, kv.length, int(r.backend.cache_len[0])) == (n, n, n), \
        f"{what}: runner.cached {r.cached}, kv.length {kv.length}, cache_len {int(r.backend.cache_len[0])}: all must " \
        f"be {n} (the context + every draft but the last)"
    for layer, (k, v) in enumerate(fresh_kv(vops, w, device, tokens)):
        assert_close(kv.k[layer][:, :n].transpose(0, 1), k, f"{what}: k cache of layer {layer}", atol=1e-5, rtol=1e-5)
        assert_close(kv.v[layer][:, :n].transpose(0, 1), v, f"{what}: v cache of layer {layer}", atol=1e-5, rtol=1e-5)


def one_line_value_error(fn, *args, **kwargs):
    with pytest.raises(ValueError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg, f"one line, please: {msg!r}"
    return msg


# ---- the self-draft -------------------------------------------------------------------------------------------
def test_self_draft_is_the_targets_first_layers_without_a_copy(day, weights):
    n = len(weights.layers)
    for L in range(1, n + 1):
        d = day.self_draft(weights, L)
        assert d.config.num_layers == L and len(d.layers) == L, \
            f"self_draft(w, {L}): config.num_layers {d.config.num_layers}, {len(d.layers)} layers; both must be {L}"
        assert replace(d.config, num_layers=n) == weights.config, "only config.num_layers may change"
        assert all(a is b for a, b in zip(d.layers, weights.layers[:L])), \
            f"self_draft(w, {L}): the layers must be the target's FIRST {L} layer objects (shared, not copied)"
        for name in ("embed", "final_norm", "lm_head", "inv_freq"):
            assert getattr(d, name) is getattr(weights, name), f"self_draft: {name} must be the target's own tensor"
    assert len(weights.layers) == n and weights.config.num_layers == n, "self_draft must leave the target whole"
    for bad in (0, n + 1, -1, 1.5, True):
        one_line_value_error(day.self_draft, weights, bad)


# ---- one draft call after another ---------------------------------------------------------------------------------
def next_context(rng, context, drafts, vocab):
    """What the loop keeps after a round: a accepted drafts + the target's own token (not the next draft)."""
    a = rng.randint(0, len(drafts))
    bonus = rng.randrange(vocab)
    if a < len(drafts) and bonus == drafts[a]:
        bonus = (bonus + 1) % vocab
    return context + drafts[:a] + [bonus]


@pytest.mark.parametrize("L, seed", [(1, 0), (2, 0), (2, 1)])
def test_drafts_and_cache_follow_the_context(day, vops, weights, device, L, seed):
    """Round after round (K 0..5, drafts accepted in part, in full, or not at all; the same context
    twice; a new prompt that shares only a prefix): the drafts are the draft model's greedy tokens,
    the cache is a fresh draft's after a prefill of the context + all drafts but the last, and the
    call fed only what the cache lacked (the catch-up + K - 1 decode steps)."""
    rng = random.Random(100 * seed + L)
    vocab, dw = weights.config.vocab_size, first_layers(weights, L)
    counting = Counting(vops)
    draft = day.ModelDraft(static_runner(counting, day.self_draft(weights, L), device), max_k=5)
    context = [rng.randrange(vocab) for _ in range(7 + 6 * seed)]
    held: list[int] = []                          # what the draft's cache holds, by the checker's count
    for step in range(9):
        if step == 4:                             # a new prompt: shares only a prefix with what the cache holds
            context = context[:3] + [rng.randrange(vocab) for _ in range(5)]
        k = [5, 3, 0, 1, 4, 5, 2, 5, 4][step]
        what = f"L={L}, call {step} (K={k}, context of {len(context)})"
        counting.fed = 0
        drafts = draft(list(context), k)
        assert isinstance(drafts, list) and all(isinstance(t, int) for t in drafts), \
            f"{what}: a list of ints, got {drafts!r}"
        assert drafts == greedy(vops, dw, device, context, k), \
            f"{what}: drafts {drafts} are not the draft model's greedy tokens {greedy(vops, dw, device, context, k)}"
        if k == 0:
            assert counting.fed == 0, f"{what}: K=0 drafts nothing and feeds nothing, fed {counting.fed} tokens"
        else:
            keep = 0
            while keep < min(len(held), len(context) - 1) and held[keep] == context[keep]:
                keep += 1
            need = len(context) - keep + k - 1
            assert counting.fed == need, \
                f"{what}: fed {counting.fed} tokens; the cache already held {keep} of the context, so " \
                f"{len(context) - keep} to catch up (the newest included) + {k - 1} decode steps = {need}"
            held = context + drafts[:-1]
        assert_cache_like_fresh(vops, dw, device, draft, held, what)
        context = list(context) if step == 5 else next_context(rng, context, drafts, vocab)   # step 6: same context


def test_model_draft_once(day, vops, weights, device):
    """model_draft(runner, context, k): the same greedy tokens from an empty cache."""
    dw = first_layers(weights, 1)
    for ctx in (PROMPT[:1], PROMPT[:9], PROMPT):
        r = static_runner(vops, day.self_draft(weights, 1), device)
        r.forward(PROMPT[:5][::-1], 0)            # whatever was there before is not used
        r.cached = 5
        got = day.model_draft(r, list(ctx), 4)
        assert got == greedy(vops, dw, device, ctx, 4), f"model_draft after {len(ctx)} tokens: {got}"


def test_bad_input_changes_nothing(day, vops, weights, device):
    counting = Counting(vops)
    draft = day.ModelDraft(static_runner(counting, day.self_draft(weights, 2), device), max_k=4)
    got = draft(PROMPT, 3)
    held = PROMPT + got[:-1]
    counting.fed = 0
    for args in ((PROMPT, -1), (PROMPT, 5), ([], 2), (PROMPT + [weights.config.vocab_size], 2), (PROMPT + [-1], 2)):
        one_line_value_error(draft, *args)
    assert counting.fed == 0, "a bad call must fail before any forward"
    assert draft(PROMPT + got[:1], 0) == [], "K=0: no drafts"
    assert_cache_like_fresh(vops, first_layers(weights, 2), device, draft, held, "after bad calls and K=0")
    one_line_value_error(day.ModelDraft, ModelRunner(vops, weights, NoCache(vops), device))


# ---- in day 35's loop -------------------------------------------------------------------------------------------
def plain(vops, w, device, prompt, n, eos=()):
    r = static_runner(vops, w, device, max_len=len(prompt) + n + 8)
    return list(reference.generate(r.next_logits, prompt, max_new_tokens=n, eos_token_ids=eos, sample=reference.sample))


def target_runner(kind, vops, w, device, max_len=96):
    if kind == "static":
        return static_runner(vops, w, device, max_len)
    return ModelRunner(vops, w, vops.PagedCache(vops, w.config, 40, 4, torch.float32, device), device)


class Watched:
    """The day's drafter inside the loop, checked after every call: its cache holds the context it
    was given + all its drafts but the last, with the right keys and values."""

    def __init__(self, draft, vops, w, device):
        self.draft, self.vops, self.w, self.device, self.calls = draft, vops, w, device, 0

    def __call__(self, context, k):
        drafts = self.draft(context, k)
        if k:
            assert_cache_like_fresh(self.vops, self.w, self.device, self.draft, list(context) + drafts[:-1],
                                    f"after draft call {self.calls} in the loop")
        self.calls += 1
        return drafts


def spec(day, vops, weights, device, kind, L, k, n=N, eos=(), max_len=96):
    runner = target_runner(kind, vops, weights, device, max_len)
    dw = day.self_draft(weights, L)
    draft = Watched(day.ModelDraft(static_runner(vops, dw, device, max_len), max_k=k), vops, first_layers(weights, L),
                    device)
    stats = SimpleNamespace(steps=0, drafted=0, accepted=0)
    out = list(vops.speculative(runner, list(PROMPT), verify=vops.Verifier(runner, max_k=k), draft=draft, k=k,
                                max_new_tokens=n, eos_token_ids=eos, stats=stats))
    return out, stats


@pytest.mark.parametrize("L, k, kind", [(1, 3, "static"), (1, 5, "paged"), (2, 1, "paged"), (2, 3, "static"),
                                         (2, 5, "static")])
def test_equals_plain_greedy_and_full_depth_accepts_everything(day, vops, weights, device, L, k, kind):
    """Token for token plain greedy at every depth; at full depth the draft is the target: 100%
    accepted and K + 1 tokens per target step."""
    want = plain(vops, weights, device, PROMPT, N)
    out, stats = spec(day, vops, weights, device, kind, L, k)
    what = f"L={L} of {len(weights.layers)}, K={k}, {kind} target cache"
    assert out == want, f"{what}: speculative tokens {out} != plain greedy {want}"
    if L == len(weights.layers):
        assert stats.accepted == stats.drafted, \
            f"{what}: the full-depth draft is the target, yet only {stats.accepted}/{stats.drafted} drafts were " \
            "accepted: the draft's cache does not follow the context (catch-up or rollback)"
        assert stats.steps == math.ceil((N - 1) / (k + 1)), f"{what}: {stats.steps} target steps"


@pytest.mark.parametrize("at", [0, 2, 5, 9])
def test_eos_inside_an_accepted_run(day, vops, weights, device, at):
    free_run = plain(vops, weights, device, PROMPT, N)
    eos = {free_run[at]}
    want = plain(vops, weights, device, PROMPT, N, eos)
    out, stats = spec(day, vops, weights, device, "static", len(weights.layers), 5, eos=eos)
    assert out == want, f"EOS {sorted(eos)}: got {out}, plain decoding stops with {want}"


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_max_new_tokens_in_caches_sized_for_them(day, vops, weights, device, n):
    """Target and draft caches of exactly prompt + n positions (what the engine sizes): n tokens."""
    want = plain(vops, weights, device, PROMPT, n)
    out, _ = spec(day, vops, weights, device, "static", len(weights.layers), 5, n=n, max_len=len(PROMPT) + n)
    assert out == want and len(out) == n, f"max_new_tokens={n}: got {out}, expected {want}"


# ---- the engine and the CLI -----------------------------------------------------------------------------------
def _engine(day, model, track, sizes, paged=False, k=3, **draft):
    """The engine with YOUR drafter (reference kernels in the simulator, the track's on a GPU)."""
    from shared.engine import Engine
    e = Engine(str(model), track=track, dtype="fp32", paged=False, graphs=False, block_size=4)
    table = sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})
    e.ops = Ops(track, overrides={**table, "ModelDraft": day.ModelDraft, "self_draft": day.self_draft})
    e.use_cache, e.use_paged = True, paged
    e.speculative, e.spec_k = "draft", k
    e.draft_layers, e.draft_model = draft.get("draft_layers"), draft.get("draft_model")
    return e


@pytest.fixture(scope="module")
def draft_dirs(tiny_model, tmp_path_factory):
    """HF folders next to the tiny model: its first layer alone (a smaller Llama, same tokenizer),
    the same with another tokenizer, and one with another vocabulary size."""
    from safetensors.torch import load_file, save_file
    root = tmp_path_factory.mktemp("drafts")
    one = root / "one_layer"
    shutil.copytree(tiny_model, one)
    tensors = {k: v for k, v in load_file(str(one / "model.safetensors")).items() if ".layers.1." not in k}
    save_file(tensors, str(one / "model.safetensors"))
    cfg = json.loads((one / "config.json").read_text())
    (one / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    other_tok = root / "other_tokenizer"
    shutil.copytree(one, other_tok)
    tok = json.loads((other_tok / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[10], list(vocab)[11]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other_tok / "tokenizer.json").write_text(json.dumps(tok))
    other_vocab = root / "other_vocab"
    shutil.copytree(one, other_vocab)
    (other_vocab / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1, "vocab_size": 300}))
    return SimpleNamespace(one=one, other_tokenizer=other_tok, other_vocab=other_vocab)


def test_engine_draft_equals_plain(day, tiny_model, track, sizes, draft_dirs):
    """Engine(speculative="draft"): plain decoding's tokens for the self-draft at both depths (static
    and paged target) and for a draft model folder; that folder holds the tiny model's first layer,
    so it drafts exactly what draft_layers=1 does."""
    base = _engine(day, tiny_model, track, sizes)
    base.speculative = None
    ids = base.prompt_ids("draft draft draft, draft")
    want = list(base.generate_ids(ids, max_new_tokens=16, ignore_eos=True))
    counts = {}
    for what, kw, paged in (("L=1", dict(draft_layers=1), False), ("L=2", dict(draft_layers=2), True),
                            ("folder", dict(draft_model=str(draft_dirs.one)), False)):
        e = _engine(day, tiny_model, track, sizes, paged=paged, **kw)
        assert "speculative draft" in e.describe(), e.describe()
        for _ in range(2 if paged else 1):        # the second run reuses the draft's cache: same tokens
            got = list(e.generate_ids(ids, max_new_tokens=16, ignore_eos=True))
            assert got == want, f"{what}: speculative draft {got} != plain {want}"
        s = e.stats.spec
        assert s.steps >= 1 and 0 <= s.accepted <= s.drafted and "tokens per target step" in s.describe(16), s
        counts[what] = (s.steps, s.drafted, s.accepted)
    assert counts["L=2"][1] == counts["L=2"][2], f"full depth: every draft accepted, got {counts['L=2']}"
    assert counts["folder"] == counts["L=1"], \
        f"a folder holding the first layer drafts like draft_layers=1: {counts['folder']} vs {counts['L=1']}"


def test_engine_refuses_bad_drafts_in_one_line(tiny_model, draft_dirs):
    from shared.engine import Engine
    one = str(draft_dirs.one)
    for kw in (dict(draft_layers=3), dict(draft_layers=0), dict(draft_layers=True), dict(draft_layers="2"),
               dict(), dict(draft_model=str(draft_dirs.one / "missing")), dict(draft_model=str(draft_dirs.other_vocab)),
               dict(draft_model=str(draft_dirs.other_tokenizer)), dict(draft_model=one, draft_layers=2)):
        one_line_value_error(Engine, str(tiny_model), dtype="fp32", speculative="draft", **kw)
    one_line_value_error(Engine, str(tiny_model), dtype="fp32", speculative="ngram", draft_layers=1)
    one_line_value_error(Engine, str(tiny_model), dtype="fp32", draft_model=one)


def test_cli_draft_prints_the_same_text_and_refuses_bad_flags(tiny_model, draft_dirs, monkeypatch, capsys):
    def gen(*flags):
        return subprocess.run([sys.executable, "-m", "shared.cli", "generate", "la la la la la la", "--model",
                               str(tiny_model), "--track", "solutions", "--max-new-tokens", "12", *flags],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    spec_run, base = gen("--speculative", "draft", "--draft-layers", "2", "--spec-k", "3"), gen()
    assert spec_run.returncode == 0 and base.returncode == 0, spec_run.stderr + base.stderr
    assert spec_run.stdout == base.stdout, "--speculative draft must print the same text as plain greedy decoding"
    assert "tokens per target step" in spec_run.stderr and "drafts accepted (100%)" in spec_run.stderr, spec_run.stderr
    from shared import cli
    monkeypatch.setattr(cli.threads, "configure", lambda: None)
    assert_cli_refuses(["generate", "la la", "--model", str(tiny_model), "--track", "solutions"],
                       [("--speculative", "draft"), ("--speculative", "draft", "--draft-layers", "3"),
                        ("--speculative", "draft", "--draft-layers", "0"), ("--draft-layers", "1"),
                        ("--speculative", "ngram", "--draft-model", str(draft_dirs.one)),
                        ("--speculative", "draft", "--draft-model", str(draft_dirs.one / "missing")),
                        ("--speculative", "draft", "--draft-model", str(draft_dirs.other_vocab))], capsys)


# ---- GPU: SmolLM2, the track's components, acceptance and speed by depth -----------------------------------
GROUNDED = ("Copy the following list exactly, one item per line, then stop.\n"
            "1. The quick brown fox jumps over the lazy dog.\n2. Pack my box with five dozen liquor jugs.\n"
            "3. How vexingly quick daft zebras jump.\n4. Sphinx of black quartz, judge my vow.\n"
            "5. The five boxing wizards jump quickly.\n6. Jackdaws love my big sphinx of quartz.\n")
OPEN = "Write a short story about a lighthouse keeper."


def _smol(day, smollm2, track, dtype, layers, paged=None, k=4):
    from shared.engine import Engine
    e = Engine(str(smollm2), track=track, dtype=dtype, paged=paged)
    e.ops = Ops(track, overrides={"ModelDraft": day.ModelDraft, "self_draft": day.self_draft})
    e.speculative, e.spec_k, e.draft_layers = "draft", k, layers
    return e


@pytest.mark.gpu
@pytest.mark.model
@pytest.mark.parametrize("paged", [False, True])
def test_smollm2_fp32_self_draft_equals_plain_greedy(day, track, smollm2, paged):
    """fp32, the track's kernels and graphs (target and draft): token for token plain greedy at a
    shallow and at full depth; at full depth (nearly) every draft is accepted -- the only
    rejections can come from the draft's decode step and the target's verify rounding a near-tie
    differently."""
    for layers in (8, 30):
        e = _smol(day, smollm2, track, "fp32", layers, paged=paged)
        for prompt in (GROUNDED, OPEN):
            ids = e.prompt_ids(prompt, chat=True)
            got = list(e.generate_ids(ids, max_new_tokens=96))
            s = e.stats.spec
            e.speculative = None
            want = list(e.generate_ids(ids, max_new_tokens=96))
            e.speculative = "draft"
            assert got == want, f"fp32 SmolLM2, draft L={layers}: differs from plain greedy at token " \
                                f"{next(i for i, (a, b) in enumerate(zip(got + [-1], want + [-2])) if a != b)}"
            if layers == 30:
                assert s.acceptance >= 0.98, f"the full-depth draft is the target: {s.accepted}/{s.drafted} accepted"


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_self_draft_by_depth(day, track, smollm2):
    """fp16, graphs, static cache, K=4: decode tok/s of the self-draft at depths 4, 8, 15 and 30 (of
    30) vs plain and n-gram, same run, on a grounded and an open-ended prompt; tokens per step,
    acceptance, tokens equal to plain. Recorded, not judged (a shallow self-draft is often slower
    than plain: it costs L/30 of a step per draft and is rarely right); fails only if the full-depth
    draft -- the target itself -- is not accepted almost always."""
    e = _smol(day, smollm2, track, "fp16", 4, paged=False)
    result = {"model": "SmolLM2-135M", "dtype": "fp16", "k": 4, "gpu": torch.cuda.get_device_name(),
              **{f"{n}_from": e.ops.source(n).describe(track) for n in ("ModelDraft", "speculative", "Verifier")}}

    def timed(ids):
        list(e.generate_ids(ids, max_new_tokens=128, ignore_eos=True))      # warm: graphs captured
        best = None
        for _ in range(3):
            out = list(e.generate_ids(ids, max_new_tokens=128, ignore_eos=True))
            best = max(best or 0.0, e.stats.decode_tok_s)
        return out, best

    for family, prompt in (("grounded", GROUNDED), ("open", OPEN)):
        ids = e.prompt_ids(prompt, chat=True)
        e.speculative = None
        plain_out, plain_tok_s = timed(ids)
        result[f"{family}_plain_tok_s"] = plain_tok_s
        for method, layers in (("ngram", None), ("draft", 4), ("draft", 8), ("draft", 15), ("draft", 30)):
            e.speculative, e.draft_layers = method, layers
            out, tok_s = timed(ids)
            s, key = e.stats.spec, f"{family}_{method}{layers or ''}"
            agree = next((i for i, (a, b) in enumerate(zip(out, plain_out)) if a != b), len(out))
            result.update({f"{key}_speedup": tok_s / plain_tok_s, f"{key}_tokens_per_step": s.tokens_per_step(
                e.stats.new_tokens), f"{key}_acceptance": s.acceptance, f"{key}_tokens_equal_to_plain": agree})
    record_bench("day_36_self_draft_by_depth", result)
    assert result["grounded_draft30_acceptance"] > 0.9, f"the full-depth draft is the target: {result}"
