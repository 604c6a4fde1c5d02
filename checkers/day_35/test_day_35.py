"""Day 35 checker: greedy speculative decoding and KV rollback. Run: pytest checkers/day_35

The oracle is plain greedy decoding (day 18's loop on a static cache): speculative decoding must
yield the same tokens, one for one, whatever the drafter proposes -- day 34's n-gram lookup, the
right answer (every draft accepted), garbage (none accepted), or a mix -- for K = 0, 1, 3, 5, on
the static and the paged cache. Before every verify (when the previous round has been rolled
back) the cache holds exactly what plain decoding holds at that point: every token but the
newest, the same keys and values, the same device length; paged: blocks_needed(length) blocks,
ref counts 1, the rest of the pool free. EOS and max_new_tokens stop exactly there, inside a run
of accepted drafts too. Sim tier: the tiny model with the reference kernels, Verifier and cache
(fast in the simulator) and YOUR loop. GPU: the track's components, SmolLM2, the engine and the
speedup on a prompt grounded in its input.
"""
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from shared import REPO, reference
from shared.course.registry import Ops
from shared.course.testing import assert_close, poison_, record_bench
from shared.engine.attention import StaticCache
from shared.engine.runner import ModelRunner

PROMPT = [72, 101, 108, 108, 111, 44, 32, 115, 112, 101, 99, 33, 32] * 2     # 26 tokens, repeated: n-grams match
KINDS = ["static", "paged"]
KS = [0, 1, 3, 5]
DRAFTERS = ["ngram", "right", "wrong", "mixed"]
N = 24                                       # new tokens per generation


@pytest.fixture(scope="module")
def vops(ops, sizes):
    """In the simulator: reference kernels, Verifier and caches (a simulated GEMV of every weight
    takes minutes). On a GPU: every component from the track."""
    return Ops(ops.track, overrides=sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={}))


@pytest.fixture(scope="module")
def weights(tiny_model, device):
    w = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return w


BLOCK_SIZE, NUM_BLOCKS = 4, 40


def make_runner(kind, ops, w, device, max_len=96):
    if kind == "static":
        backend = StaticCache(ops, w.config, max_len, torch.float32, device)
    else:
        backend = ops.PagedCache(ops, w.config, NUM_BLOCKS, BLOCK_SIZE, torch.float32, device)
        poison_(backend.k), poison_(backend.v)              # a slot read before it was written shows as NaN
        backend.allocator.allocate("other", 1)              # sequence 0's blocks do not follow one another
    return ModelRunner(ops, w, backend, device)


def plain(ops, w, device, prompt, n, eos=()):
    """Plain greedy decoding: the tokens, and the runner (its cache is the reference state)."""
    runner = make_runner("static", ops, w, device, max_len=len(prompt) + n + 8)
    return list(reference.generate(runner.next_logits, prompt, max_new_tokens=n, eos_token_ids=eos,
                                   sample=reference.sample)), runner


def drafter(name, full, vocab, k_seed=0):
    """draft(context, n): `full` is prompt + the plain greedy continuation, so the right guess is
    full[len(context):]. wrong: the right token + 1 (never accepted); mixed: right tokens with
    about one in three replaced (seeded by the context's length)."""
    def right(ctx, n):
        return full[len(ctx):len(ctx) + n]

    def wrong(ctx, n):
        return [(t + 1) % vocab for t in right(ctx, n)] or [7] * n

    def mixed(ctx, n):
        g = torch.Generator().manual_seed(1000 * k_seed + len(ctx))
        return [t if float(torch.rand(1, generator=g)) > 0.33 else (t + 5) % vocab for t in right(ctx, n)]

    return {"ngram": reference.ngram_draft, "right": right, "wrong": wrong, "mixed": mixed}[name]


def new_stats():
    return SimpleNamespace(steps=0, drafted=0, accepted=0)


def cache_state(backend):
    """(tokens held, device length) of either cache; paged also (table, num_free, ref counts of the table)."""
    if hasattr(backend, "block_tables"):
        a = backend.allocator
        table = a.block_table(0)
        return a.length(0), int(backend.context_lens[0]), table, a.num_free, [a.ref_counts[b] for b in table]
    return backend.kv.length, int(backend.cache_len[0])


def cached_kv(backend, layer, n):
    """Keys and values of positions 0..n-1 of one layer, [n, KV, hd], from either cache."""
    if hasattr(backend, "block_tables"):
        table, bs = backend.allocator.block_table(0), backend.block_size
        blocks = torch.tensor([table[p // bs] for p in range(n)], dtype=torch.long)
        offs = torch.tensor([p % bs for p in range(n)], dtype=torch.long)
        return backend.k[layer][blocks, :, offs], backend.v[layer][blocks, :, offs]
    return backend.kv.k[layer][:, :n].transpose(0, 1), backend.kv.v[layer][:, :n].transpose(0, 1)


def assert_cache_like_plain(runner, oracle, length, what):
    """The speculative runner's cache holds `length` tokens exactly as plain decoding does."""
    backend = runner.backend
    state = cache_state(backend)
    assert runner.cached == length, f"{what}: runner.cached is {runner.cached}, plain decoding holds {length} tokens"
    assert state[:2] == (length, length), \
        f"{what}: the cache holds {state[0]} tokens with device length {state[1]}; plain decoding holds {length} " \
        "(every token but the newest): roll back to the newest token + the accepted drafts"
    if len(state) > 2:
        _, _, table, free, refs = state
        need = -(-length // backend.block_size)
        assert len(table) == need, f"{what}: sequence 0 holds {len(table)} blocks for {length} tokens, needs {need}: " \
                                   "give the blocks past the kept tokens back (rollback)"
        assert free == backend.num_blocks - need - 1, \
            f"{what}: {free} blocks free, expected {backend.num_blocks - need - 1} (another sequence holds 1)"
        assert refs == [1] * need, f"{what}: ref counts of sequence 0's blocks {refs}, expected all 1"
    for layer in range(runner.weights.config.num_layers):
        for name, a, b in zip("kv", cached_kv(backend, layer, length), cached_kv(oracle.backend, layer, length)):
            assert_close(a, b, f"{what}: {name} cache of layer {layer}, positions 0..{length - 1}", atol=1e-5, rtol=1e-5)


class Spy:
    """verify that checks, before each call, the state the previous round left (and the call)."""

    def __init__(self, verifier, runner, oracle, prompt, out, k, n):
        self.verifier, self.runner, self.oracle, self.prompt, self.out, self.k, self.n = \
            verifier, runner, oracle, prompt, out, k, n
        self.calls = []

    def __call__(self, tokens, start):
        tokens = list(tokens)
        context = self.prompt + self.out
        what = f"before verify {len(self.calls)} (after {len(self.out)} new tokens)"
        assert start == len(context) - 1 and tokens[:1] == context[-1:], \
            f"{what}: verify(tokens, {start}) must start at {len(context) - 1} with the newest token " \
            f"{context[-1]}, got tokens {tokens}: the cache holds every token but the newest"
        assert len(tokens) - 1 <= min(self.k, self.n - len(self.out) - 1), \
            f"{what}: {len(tokens) - 1} drafts with K={self.k} and {self.n - len(self.out)} tokens still allowed: " \
            "draft at most min(K, tokens still allowed - 1)"
        assert_cache_like_plain(self.runner, self.oracle, start, what)
        self.calls.append(tokens)
        return self.verifier(tokens, start)


def run(day, vops, weights, device, kind, k, draft, prompt=PROMPT, n=N, eos=(), max_len=96):
    """YOUR loop with the spy; returns (tokens, stats, spy, runner, oracle)."""
    want, oracle = plain(vops, weights, device, prompt, n, eos)
    runner = make_runner(kind, vops, weights, device, max_len=max_len)
    out, stats = [], new_stats()
    spy = Spy(vops.Verifier(runner, max_k=max(k, 1)), runner, oracle, list(prompt), out, k, n)
    for tok in day.speculative(runner, list(prompt), verify=spy, draft=draft, k=k, max_new_tokens=n,
                               eos_token_ids=eos, stats=stats):
        out.append(tok)
        assert len(out) <= n, f"yielded {len(out)} tokens with max_new_tokens={n}"
    return out, want, stats, spy, runner, oracle


# ---- output == plain greedy, and the cache after every rollback ----------------------------------------------
@pytest.mark.parametrize("name", DRAFTERS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("kind", KINDS)
def test_equals_plain_greedy_and_rolls_back_like_it(day, vops, weights, device, kind, k, name):
    """Token for token == plain greedy; before each verify the cache is plain decoding's (the spy);
    at the end it holds every token but the last and, released, the pool is as it began."""
    want, _ = plain(vops, weights, device, PROMPT, N)
    draft = drafter(name, PROMPT + want, weights.config.vocab_size, k_seed=k)
    out, want, stats, spy, runner, oracle = run(day, vops, weights, device, kind, k, draft)
    what = f"K={k}, {name} drafts, {kind} cache"
    assert out == want, f"{what}: speculative tokens {out} != plain greedy {want}"
    assert_cache_like_plain(runner, oracle, len(PROMPT) + N - 1, f"{what}, at the end")
    assert stats.steps == len(spy.calls), f"{what}: stats.steps {stats.steps}, but {len(spy.calls)} verifies ran"
    assert stats.drafted == sum(len(c) - 1 for c in spy.calls), f"{what}: stats.drafted {stats.drafted}"
    assert 0 <= stats.accepted <= stats.drafted, f"{what}: stats.accepted {stats.accepted} of {stats.drafted}"
    if k == 0:
        assert all(len(c) == 1 for c in spy.calls), f"{what}: K=0 verifies only the newest token"
        assert stats.steps == N - 1, f"K=0 is plain decoding: {N - 1} target steps after the prefill, got {stats.steps}"
    if name == "wrong":
        assert stats.accepted == 0 and stats.steps == N - 1, \
            f"{what}: no wrong draft may be accepted ({stats.accepted}); one token per verify ({stats.steps} steps)"
    if name == "right":
        assert stats.accepted == stats.drafted, f"{what}: right drafts: all {stats.drafted} accepted, got {stats.accepted}"
        assert stats.steps == math.ceil((N - 1) / (k + 1)), \
            f"{what}: every verify of K + 1 = {k + 1} right tokens yields {k + 1} tokens (the K drafts + the " \
            f"target's own next one): {math.ceil((N - 1) / (k + 1))} steps, got {stats.steps}"
    runner.release()
    if kind == "paged":
        a = runner.backend.allocator
        assert a.num_free == NUM_BLOCKS - 1, f"{what}: after release, {a.num_free} blocks free, expected {NUM_BLOCKS - 1}"


def test_mixed_drafts_accept_every_length(day, vops, weights, device):
    """The mixed drafter at K=5 must have produced rounds that accept 0, some and all drafts (the
    partial rollbacks the spy checks): a test of the test, and of the accept rule."""
    want, _ = plain(vops, weights, device, PROMPT, 40)
    draft = drafter("mixed", PROMPT + want, weights.config.vocab_size, k_seed=5)
    out, want, stats, spy, *_ = run(day, vops, weights, device, "paged", 5, draft, n=40)
    assert out == want
    kept, full = [], PROMPT + want
    context = full[:len(PROMPT) + 1]                # the prompt and the prefill's token
    for call in spy.calls:                          # replay: how many drafts the target kept each round
        a = 0
        while a < len(call) - 1 and call[1 + a] == full[len(context) + a]:
            a += 1
        kept.append(a)
        context = full[:len(context) + a + 1]
    assert 0 in kept and 5 in kept and any(0 < a < 5 for a in kept), f"accepted per round: {kept}"
    assert stats.accepted == sum(kept), f"stats.accepted {stats.accepted}, the rounds accepted {sum(kept)}"


# ---- stopping -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("at", [0, 1, 3, 7, 10])
def test_eos_stops_exactly_there_inside_an_accepted_run(day, vops, weights, device, kind, at):
    """EOS = the token plain decoding produces at index `at`; the right drafter proposes past it in
    one run. Yield up to and including that EOS, nothing after; the cache is plain decoding's at
    its EOS."""
    free_run, _ = plain(vops, weights, device, PROMPT, N)
    eos = {free_run[at]}
    draft = drafter("right", PROMPT + free_run, weights.config.vocab_size)
    out, want, stats, spy, runner, oracle = run(day, vops, weights, device, kind, 5, draft, eos=eos)
    assert want[-1] in eos and len(want) <= at + 1, "test setup: plain decoding stops at that EOS"
    assert out == want, f"EOS {sorted(eos)} (plain decoding stops after {len(want)} tokens): got {out}, expected " \
                        f"{want} -- stop right after the EOS even when later drafts were accepted"
    if len(want) > 1:
        assert_cache_like_plain(runner, oracle, len(PROMPT) + len(want) - 1, f"{kind} cache after EOS at {len(want) - 1}")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 11])
def test_max_new_tokens_stops_exactly_there(day, vops, weights, device, n):
    """Right drafts at K=5 with n new tokens allowed, in a static cache of exactly prompt + n
    positions (what the engine sizes): n tokens, never more, and no verify past the end."""
    want, _ = plain(vops, weights, device, PROMPT, N)
    draft = drafter("right", PROMPT + want, weights.config.vocab_size)
    out, want, stats, spy, runner, _ = run(day, vops, weights, device, "static", 5, draft, n=n,
                                           max_len=len(PROMPT) + n)
    assert out == want and len(out) == n, f"max_new_tokens={n}: got {len(out)} tokens {out}, expected {want}"


def test_a_drafter_with_nothing_to_propose_and_bad_input(day, vops, weights, device):
    """A drafter that proposes nothing (k > 0) is plain decoding; k < 0 is a one-line ValueError."""
    out, want, stats, spy, *_ = run(day, vops, weights, device, "static", 4, lambda ctx, n: [])
    assert out == want and stats.drafted == 0 and stats.steps == N - 1
    runner = make_runner("static", vops, weights, device)
    with pytest.raises(ValueError) as e:
        list(day.speculative(runner, PROMPT, verify=vops.Verifier(runner, max_k=1), draft=reference.ngram_draft,
                             k=-1, max_new_tokens=4))
    assert str(e.value) and "\n" not in str(e.value), f"one line, please: {e.value!r}"


# ---- the engine and the CLI -----------------------------------------------------------------------------------
def _engine(day, model, track, sizes, paged, k=3, dtype="fp32"):
    """The engine with YOUR loop (reference kernels in the simulator, the track's on a GPU)."""
    from shared.engine import Engine
    e = Engine(str(model), track=track, dtype=dtype, paged=False, graphs=False, block_size=4)
    table = sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})
    e.ops = Ops(track, overrides={**table, "speculative": day.speculative})
    e.use_cache, e.use_paged = True, paged
    e.speculative, e.spec_k = "ngram", k
    return e


@pytest.mark.parametrize("paged", [False, True])
def test_engine_speculative_equals_plain(day, tiny_model, track, sizes, paged):
    """Engine(speculative="ngram") gives plain decoding's tokens, reports tokens per target step and
    acceptance, and (paged) gives every block back."""
    spec = _engine(day, tiny_model, track, sizes, paged)
    base = _engine(day, tiny_model, track, sizes, paged)
    base.speculative = None
    assert "speculative ngram" in spec.describe(), spec.describe()
    for prompt in ("Hello hello hello hello", "abcabcabcabcabc"):
        ids = spec.prompt_ids(prompt)
        got = list(spec.generate_ids(ids, max_new_tokens=16, ignore_eos=True))
        assert got == list(base.generate_ids(ids, max_new_tokens=16, ignore_eos=True)), f"{prompt!r}: spec != plain"
        s = spec.stats.spec
        assert s is not None and s.steps >= 1 and 0 <= s.accepted <= s.drafted, s
        assert s.tokens_per_step(spec.stats.new_tokens) >= 1.0 and "tokens per target step" in s.describe(16)
        if paged:
            b = spec.runner(len(ids) + 16).backend
            assert b.allocator.num_free == b.num_blocks, "after a speculative generation every block is free again"
    with pytest.raises(ValueError) as e:
        spec.generate_ids(ids, max_new_tokens=4, temperature=0.7)
    assert "\n" not in str(e.value) and "temperature" in str(e.value)


@pytest.mark.parametrize("kw", [dict(speculative="draft"), dict(speculative="ngram", spec_k=0),
                                dict(speculative="ngram", spec_k=17), dict(speculative="ngram", use_cache=False)])
def test_engine_refuses_what_it_cannot_run(tiny_model, kw):
    from shared.engine import Engine
    with pytest.raises(ValueError) as e:
        Engine(str(tiny_model), dtype="fp32", **kw)
    assert str(e.value) and "\n" not in str(e.value), f"{kw}: one line, please: {e.value!r}"


def test_cli_speculative_prints_the_same_text_and_the_footer(tiny_model):
    def gen(*flags):
        return subprocess.run([sys.executable, "-m", "shared.cli", "generate", "la la la la la la", "--model",
                               str(tiny_model), "--track", "solutions", "--max-new-tokens", "12", *flags],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    spec, base = gen("--speculative", "ngram", "--spec-k", "3"), gen()
    assert spec.returncode == 0 and base.returncode == 0, spec.stderr + base.stderr
    assert spec.stdout == base.stdout, "--speculative ngram must print the same text as plain greedy decoding"
    assert "tokens per target step" in spec.stderr and "drafts accepted" in spec.stderr, spec.stderr
    for flags in (("--speculative", "ngram", "--temperature", "0.7"), ("--spec-k", "3"),
                  ("--speculative", "ngram", "--spec-k", "0"), ("--speculative", "ngram", "--no-cache")):
        r = gen(*flags)
        lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("[")]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("tinyinfer: error:"), (flags, r.stderr)


# ---- GPU: SmolLM2, the track's components, the speedup ------------------------------------------------------
GROUNDED = ("Copy the following list exactly, one item per line, then stop.\n"
            "1. The quick brown fox jumps over the lazy dog.\n2. Pack my box with five dozen liquor jugs.\n"
            "3. How vexingly quick daft zebras jump.\n4. Sphinx of black quartz, judge my vow.\n"
            "5. The five boxing wizards jump quickly.\n6. Jackdaws love my big sphinx of quartz.\n")


def _smol(day, smollm2, track, dtype, paged, graphs, k=4):
    from shared.engine import Engine
    e = Engine(str(smollm2), track=track, dtype=dtype, graphs=graphs, paged=paged)
    e.ops = Ops(track, overrides={"speculative": day.speculative})
    e.speculative, e.spec_k = "ngram", k
    return e


@pytest.mark.gpu
@pytest.mark.model
@pytest.mark.parametrize("paged", [False, True])
def test_smollm2_fp32_equals_plain_greedy(day, track, smollm2, paged):
    """fp32, the track's kernels and graphs: token for token plain greedy on a grounded prompt (many
    drafts accepted) and an open-ended one (few)."""
    e = _smol(day, smollm2, track, "fp32", paged, graphs=None)
    for prompt in (GROUNDED, "Write a short story about a lighthouse keeper."):
        ids = e.prompt_ids(prompt, chat=True)
        got = list(e.generate_ids(ids, max_new_tokens=96))
        spec = e.stats.spec
        e.speculative = None
        want = list(e.generate_ids(ids, max_new_tokens=96))
        e.speculative = "ngram"
        assert got == want, f"fp32 SmolLM2 ({'paged' if paged else 'static'}): speculative differs from plain greedy " \
                            f"at token {next(i for i, (a, b) in enumerate(zip(got + [-1], want + [-2])) if a != b)}"
        if prompt is GROUNDED:
            assert spec.accepted > 0, f"the n-gram drafter found nothing to copy in the grounded prompt: {spec}"


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_speculative_vs_plain(day, track, smollm2):
    """fp16, graphs, the paged cache (the engine's own): decode tok/s of speculative ngram (K 2, 4,
    8) vs plain on the grounded prompt, same run; tokens per step, acceptance and how many tokens
    agree with plain (fp16: the verify's batched arithmetic may round differently). Fails only if
    speculation is slower than plain decoding where rounds yield two tokens or more."""
    e = _smol(day, smollm2, track, "fp16", paged=True, graphs=None)
    ids = e.prompt_ids(GROUNDED, chat=True)
    e.speculative = None

    def timed():
        list(e.generate_ids(ids, max_new_tokens=128, ignore_eos=True))      # warm: graphs captured
        best = None
        for _ in range(3):
            out = list(e.generate_ids(ids, max_new_tokens=128, ignore_eos=True))
            best = max(best or 0.0, e.stats.decode_tok_s)
        return out, best

    plain_out, plain_tok_s = timed()
    result = {"model": "SmolLM2-135M", "dtype": "fp16", "gpu": torch.cuda.get_device_name(), "plain_tok_s": plain_tok_s,
              **{f"{n}_from": e.ops.source(n).describe(track) for n in ("speculative", "Verifier", "linear")}}
    for k in (2, 4, 8):
        e.speculative, e.spec_k = "ngram", k
        out, tok_s = timed()
        s = e.stats.spec
        agree = next((i for i, (a, b) in enumerate(zip(out, plain_out)) if a != b), len(out))
        result.update({f"k{k}_tok_s": tok_s, f"k{k}_speedup": tok_s / plain_tok_s,
                       f"k{k}_tokens_per_step": s.tokens_per_step(e.stats.new_tokens),
                       f"k{k}_acceptance": s.acceptance, f"k{k}_tokens_equal_to_plain": agree})
    record_bench("day_35_speculative_vs_plain", result)
    assert result["k4_tokens_per_step"] >= 1.8, f"test setup: the grounded prompt should copy: {result}"
    assert result["k4_speedup"] > 1.0, f"speculative ngram K=4 is slower than plain decoding on a grounded prompt: {result}"
