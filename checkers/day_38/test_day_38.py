"""Day 38 checker: acceptance rate, expected tokens per step, K chosen adaptively. Run: pytest checkers/day_38

The formula against a simulation of i.i.d. acceptance, its limits (alpha = 0: 1 token, alpha = 1:
K + 1) and its monotonicity; choose_k against a brute force of tokens per unit of time, within
its bounds. The counts per draft position on a scripted run, and on simulated rounds, where
accepted / judged must recover alpha (accepted / drafted does not). The controller: its estimate
is the stated moving average over judged drafts (half-life in judged drafts), K stays within its
bounds whatever it is fed (hypothesis), falls to k_min under an always-wrong drafter and climbs
to k_max under an always-right one within 2 half-lives of rounds, and in the cost model's own
time units it is within 5% of the best fixed K on i.i.d. acceptance and beats every fixed K on a
text that alternates copying and writing. Bad input: one-line ValueErrors that change nothing.

The engine with spec_k="auto" (the tiny model, fp32, reference kernels and loop in the
simulator; YOUR AdaptiveK) gives plain greedy decoding's tokens with the n-gram drafter, right
drafts, wrong drafts and garbage, drafts no more than the K your controller chose each round,
and ends with every block back in the pool. GPU: SmolLM2 token for token, and the bench:
adaptive K at most 5% slower than the best fixed K of the same run, on a grounded and an
open-ended prompt.
"""
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from shared import REPO, reference
from shared.course.registry import Ops
from shared.course.testing import assert_cli_refuses, record_bench

HALF_LIFE, COST = 8.0, 0.1            # the controller the behaviour tests build (the defaults too)


def one_line_value_error(fn, *args, names=None, **kwargs):
    """fn(*args, **kwargs) raises a one-line ValueError (that names `names`, when given)."""
    with pytest.raises(ValueError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg, f"one line, please: {msg!r}"
    assert names is None or names in msg, f"say what is wrong: the message should name {names!r}, got {msg!r}"


def rounds_iid(alpha, k, n, seed):
    """n rounds of k drafts, each accepted with probability alpha independently: the accepted
    prefix length of each round (numpy, seeded)."""
    ok = np.random.default_rng(seed).random((n, k)) < alpha
    return np.where(ok.all(1), k, np.argmin(ok, 1)) if k else np.zeros(n, dtype=int)


# ---- expected_tokens ------------------------------------------------------------------------------------------
def test_expected_tokens_limits(day):
    for k in range(17):
        assert day.expected_tokens(0.0, k) == pytest.approx(1.0, abs=1e-12), \
            f"alpha = 0: every draft is rejected, a round yields the target's own token only: 1, got " \
            f"{day.expected_tokens(0.0, k)} for K={k}"
        assert day.expected_tokens(1.0, k) == pytest.approx(k + 1, abs=1e-9), \
            f"alpha = 1: all K drafts + the bonus token, K + 1 = {k + 1}, got {day.expected_tokens(1.0, k)}"
    for a in (0.1, 0.5, 0.9):
        assert day.expected_tokens(a, 0) == pytest.approx(1.0), f"K = 0 is a plain step: 1 token (alpha {a})"
        assert day.expected_tokens(a, 1) == pytest.approx(1 + a), f"K = 1: 1 + alpha (alpha {a})"


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_expected_tokens_matches_a_simulation(day, alpha, k):
    """40 000 simulated rounds with i.i.d. acceptance: the mean tokens per round (accepted prefix +
    the bonus) within 5 standard errors of the formula."""
    tokens = rounds_iid(alpha, k, 40_000, seed=int(alpha * 100) + k) + 1
    mean, se = float(tokens.mean()), float(tokens.std()) / math.sqrt(len(tokens))
    got = day.expected_tokens(alpha, k)
    assert abs(got - mean) <= 5 * se + 1e-9, (
        f"expected_tokens({alpha}, {k}) = {got}, but simulated rounds average {mean:.4f} tokens (+- {se:.4f}): "
        "a round yields its accepted drafts + 1")


def test_expected_tokens_grows_with_alpha_and_k(day):
    """Non-decreasing in alpha and in K, never above K + 1 nor 1 / (1 - alpha)."""
    alphas = [i / 200 for i in range(201)]
    for k in range(17):
        values = [day.expected_tokens(a, k) for a in alphas]
        dips = [(alphas[i], alphas[i + 1]) for i in range(200) if values[i + 1] < values[i] * (1 - 1e-9)]
        assert not dips, f"K={k}: expected tokens fall as alpha grows from {dips[0][0]} to {dips[0][1]}"
        for a, v in zip(alphas, values):
            cap = k + 1 if a == 1 else min(k + 1, 1 / (1 - a))
            assert 1 - 1e-9 <= v <= cap * (1 + 1e-9), f"expected_tokens({a}, {k}) = {v} outside [1, {cap}]"
    for a in alphas:
        values = [day.expected_tokens(a, k) for k in range(17)]
        assert all(y >= x * (1 - 1e-9) for x, y in zip(values, values[1:])), \
            f"alpha {a}: expected tokens fall as K grows: {values}"


# ---- choose_k -------------------------------------------------------------------------------------------------
def rate(alpha, k, cost):
    """The checker's own tokens per unit of time: (1 + alpha + ... + alpha^k) / (1 + cost * k)."""
    return sum(alpha ** j for j in range(k + 1)) / (1 + cost * k)


BOUNDS = [(1, 1), (1, 8), (2, 5), (3, 16), (6, 6), (1, 16)]


def test_choose_k_is_the_best_k_within_the_bounds(day):
    for k_min, k_max in BOUNDS:
        for cost in (0.0, 0.02, 0.1, 0.3, 1.0, 5.0):
            for alpha in [i / 40 for i in range(41)]:
                k = day.choose_k(alpha, cost, k_min, k_max)
                where = f"choose_k({alpha}, cost={cost}, {k_min}, {k_max}) = {k}"
                assert isinstance(k, int) and k_min <= k <= k_max, f"{where}: K must be an int in {k_min}..{k_max}"
                best = max(range(k_min, k_max + 1), key=lambda j: rate(alpha, j, cost))
                assert rate(alpha, k, cost) >= rate(alpha, best, cost) * (1 - 1e-9), (
                    f"{where}: {rate(alpha, k, cost):.4f} tokens per unit of time, K={best} gives "
                    f"{rate(alpha, best, cost):.4f} (a round of K drafts takes 1 + cost * K)")


def test_choose_k_limits_and_ties(day):
    for k_min, k_max in BOUNDS:
        assert day.choose_k(0.0, 0.1, k_min, k_max) == k_min, "alpha = 0: drafts only cost time: the fewest"
        assert day.choose_k(0.0, 0.0, k_min, k_max) == k_min, \
            "alpha = 0 and cost = 0: every K gives 1 token per unit of time, a tie: the smaller K wins"
        assert day.choose_k(1.0, 0.1, k_min, k_max) == k_max, "alpha = 1: every draft is kept: the most"
        assert day.choose_k(0.9, 0.0, k_min, k_max) == k_max, "cost = 0: more drafts are free: the most"


def test_choose_k_moves_the_right_way(day):
    """More acceptance never asks for fewer drafts; a dearer draft never asks for more."""
    alphas = [i / 50 for i in range(51)]
    for cost in (0.02, 0.1, 0.3):
        ks = [day.choose_k(a, cost, 1, 16) for a in alphas]
        assert ks == sorted(ks), f"cost {cost}: K by alpha {list(zip(alphas, ks))} should never fall"
    for a in (0.5, 0.8, 0.95):
        ks = [day.choose_k(a, c, 1, 16) for c in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)]
        assert ks == sorted(ks, reverse=True), f"alpha {a}: K by cost {ks} should never rise"


# ---- AcceptanceStats ------------------------------------------------------------------------------------------
def test_stats_count_a_scripted_run(day):
    s = day.AcceptanceStats()
    for proposed, accepted in [(3, 1), (3, 3), (2, 0), (0, 0), (4, 2)]:
        s.record(proposed, accepted)
    assert s.proposed == [4, 4, 3, 1], f"proposed per position {s.proposed}, expected [4, 4, 3, 1]"
    assert s.judged == [4, 3, 2, 0], (
        f"judged per position {s.judged}, expected [4, 3, 2, 0]: a draft is judged when every draft before it "
        "was accepted -- the first rejected one too, none after it; (3, 3) rejects nothing")
    assert s.accepted == [3, 2, 1, 0], f"accepted per position {s.accepted}, expected [3, 2, 1, 0]"
    assert (s.rounds, s.tokens) == (5, 11), (
        f"rounds {s.rounds}, tokens {s.tokens}: expected 5 rounds and 11 tokens (each round: its accepted "
        "drafts + the bonus; a round without drafts still yields 1)")
    assert s.alpha == pytest.approx(6 / 9) and s.by_position() == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    assert s.tokens_per_step() == pytest.approx(11 / 5)


@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.9])
def test_stats_recover_alpha_from_rounds(day, alpha):
    """20 000 rounds with i.i.d. acceptance, 0..6 drafts each (a drafter proposes fewer when it
    finds less): alpha and every well-sampled position's rate within 5 standard errors of the
    truth; tokens per step as the formula says on average."""
    rng = np.random.default_rng(int(alpha * 10))
    proposed = rng.integers(0, 7, 20_000)
    ok = rng.random((20_000, 6)) < alpha
    run = np.where(ok.all(1), 6, np.argmin(ok, 1))
    s = day.AcceptanceStats()
    for p, r in zip(proposed.tolist(), run.tolist()):
        s.record(p, min(p, r))
    judged = sum(s.judged)
    se = math.sqrt(alpha * (1 - alpha) / judged)
    assert abs(s.alpha - alpha) <= 5 * se, (
        f"alpha {alpha}: the stats say {s.alpha:.3f} -- count acceptance over the drafts the target judged (the "
        f"first rejected one included), not over every draft proposed ({sum(s.accepted) / sum(s.proposed):.3f})")
    for i, (r, j) in enumerate(zip(s.by_position(), s.judged)):
        if j >= 500:
            assert abs(r - alpha) <= 5 * math.sqrt(alpha * (1 - alpha) / j), \
                f"alpha {alpha}: position {i} accepted {r:.3f} of {j} judged drafts"
    want = np.mean([day.expected_tokens(alpha, p) for p in proposed.tolist()])
    assert s.tokens_per_step() == pytest.approx(want, rel=0.03), \
        f"alpha {alpha}: {s.tokens_per_step():.3f} tokens per step, the formula says {want:.3f} on average"


# ---- AdaptiveK --------------------------------------------------------------------------------------------
def ema(alpha, outcomes, half_life):
    """The checker's own moving average over judged drafts (1 accepted, 0 rejected)."""
    w = 1 - 0.5 ** (1 / half_life)
    for x in outcomes:
        alpha += w * (x - alpha)
    return alpha


def judged_outcomes(proposed, accepted):
    return [1] * accepted + ([0] if accepted < proposed else [])


def test_the_estimate_is_a_moving_average_over_judged_drafts(day):
    c = day.AdaptiveK(1, 8, cost=COST, half_life=HALF_LIFE, alpha=1.0)
    for _ in range(8):
        c.update(1, 0)
    assert c.alpha == pytest.approx(0.5, abs=1e-9), (
        f"from 1.0, 8 rejected drafts (the half-life) must halve the estimate: got {c.alpha:.4f} -- each judged "
        "draft moves it 1 - 2^(-1/half_life) of the way to 1 (accepted) or 0 (rejected)")
    c = day.AdaptiveK(1, 8, cost=COST, half_life=HALF_LIFE, alpha=0.0)
    c.update(8, 8)
    assert c.alpha == pytest.approx(0.5, abs=1e-9), (
        f"from 0.0, one round that accepts 8 drafts must move it halfway to 1 (8 judged drafts), got {c.alpha:.4f}: "
        "the average runs over judged drafts, not over rounds")
    for start, (p, a) in [(0.5, (5, 2)), (0.2, (6, 0)), (0.9, (3, 3)), (0.4, (0, 0))]:
        c = day.AdaptiveK(1, 8, cost=COST, half_life=HALF_LIFE, alpha=start)
        c.update(p, a)
        want = ema(start, judged_outcomes(p, a), HALF_LIFE)
        assert c.alpha == pytest.approx(want, abs=1e-9), (
            f"from {start}, a round of {p} drafts accepting {a}: the judged drafts are {judged_outcomes(p, a)} "
            f"(none after the first rejection), the estimate should be {want:.4f}, got {c.alpha:.4f}")


def drive(c, drafter_right, rounds):
    """Feed rounds as the engine would (it drafts c.k); the K for each next round."""
    ks = []
    for _ in range(rounds):
        ks.append(c.update(c.k, c.k if drafter_right else 0))
    return ks


@pytest.mark.parametrize("k_min, k_max", [(1, 8), (2, 6)])
def test_k_follows_an_always_wrong_and_an_always_right_drafter(day, k_min, k_max):
    within = int(2 * HALF_LIFE)
    c = day.AdaptiveK(k_min, k_max, cost=COST, half_life=HALF_LIFE)
    wrong = drive(c, False, 40)
    assert wrong[within - 1:] == [k_min] * (40 - within + 1) and wrong == sorted(wrong, reverse=True), (
        f"an always-wrong drafter from the start: K by round {wrong}; it must fall to k_min={k_min} within "
        f"{within} rounds and stay there")
    right = drive(c, True, 40)
    assert right[within - 1:] == [k_max] * (40 - within + 1) and right == sorted(right), (
        f"then an always-right drafter: K by round {right}; it must climb to k_max={k_max} within {within} "
        "rounds and stay there")
    wrong = drive(c, False, 40)
    assert wrong[within - 1:] == [k_min] * (40 - within + 1), (
        f"after {40} right rounds, an always-wrong drafter: K by round {wrong}; it must be back at k_min={k_min} "
        f"within {within} rounds -- an estimate that never forgets stays high for hundreds")


def modelled_rate(c_or_k, alpha_at, tokens, seed):
    """Tokens per unit of modelled time (a round of K drafts takes 1 + COST * K) for `tokens`
    tokens, the draft at each position accepted with probability alpha_at(position)."""
    rng, pos, time = random.Random(seed), 0, 0.0
    while pos < tokens:
        k = c_or_k if isinstance(c_or_k, int) else c_or_k.k
        a = alpha_at(pos)
        n = 0
        while n < k and rng.random() < a:
            n += 1
        time += 1 + COST * k
        pos += n + 1
        if not isinstance(c_or_k, int):
            c_or_k.update(k, n)
    return pos / time


TEXTS = {"iid 0.3": lambda p: 0.3, "iid 0.7": lambda p: 0.7, "iid 0.95": lambda p: 0.95,
         "copy 60 / write 60": lambda p: 0.95 if (p // 60) % 2 == 0 else 0.1}


@pytest.mark.parametrize("text", list(TEXTS))
def test_adaptive_k_against_fixed_k_in_modelled_time(day, text):
    """The sim tier's stand-in for the GPU bench, in the cost model's units: 3000 tokens, 4 seeds.
    Within 5% of the best fixed K in 1..8 on i.i.d. acceptance; ahead of every fixed K where the
    text alternates copying (0.95) and writing (0.1)."""
    f = TEXTS[text]
    seeds = range(4)
    adaptive = sum(modelled_rate(day.AdaptiveK(1, 8, cost=COST, half_life=HALF_LIFE), f, 3000, s) for s in seeds)
    fixed = {k: sum(modelled_rate(k, f, 3000, 100 + s) for s in seeds) for k in (1, 2, 3, 4, 6, 8)}
    best = max(fixed, key=fixed.get)
    ratio = adaptive / fixed[best]
    floor = 1.0 if text.startswith("copy") else 0.95
    assert ratio >= floor, (
        f"{text}: adaptive K yields {ratio:.3f}x the tokens per unit of time of the best fixed K ({best}); "
        f"expected >= {floor}")


try:
    from hypothesis import given, settings, strategies as st
except ImportError:                              # pragma: no cover - hypothesis is a course dependency
    given = None


def test_k_stays_within_its_bounds_whatever_it_sees(day):
    """Any bounds, cost, half-life, prior and sequence of rounds: after every update K is in
    k_min..k_max, returned and stored, the best K for the current estimate; the estimate is the
    moving average over the judged drafts; the counts are the rounds'."""
    if given is None:
        pytest.fail("day 38's property test needs hypothesis: pip install hypothesis")

    @settings(max_examples=150, derandomize=True, database=None, deadline=None)
    @given(data=st.data())
    def check(data):
        k_min = data.draw(st.integers(1, 6))
        k_max = data.draw(st.integers(k_min, 12))
        cost = data.draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 2.0]))
        half_life = data.draw(st.sampled_from([0.5, 1.0, 4.0, 8.0, 50.0]))
        alpha = data.draw(st.floats(0.0, 1.0))
        rounds = data.draw(st.lists(st.integers(0, 14).flatmap(lambda p: st.tuples(st.just(p), st.integers(0, p))),
                                    max_size=30))
        c = day.AdaptiveK(k_min, k_max, cost=cost, half_life=half_life, alpha=alpha)
        want_alpha, outcomes = alpha, []
        for p, a in rounds:
            k = c.update(p, a)
            what = f"AdaptiveK({k_min}, {k_max}, cost={cost}, half_life={half_life}, alpha={alpha}) after {rounds}"
            assert k == c.k and k_min <= k <= k_max, f"{what}: update returned {k}, c.k = {c.k}"
            want_alpha = ema(want_alpha, judged_outcomes(p, a), half_life)
            outcomes.append((p, a))
            assert c.alpha == pytest.approx(want_alpha, abs=1e-9), f"{what}: estimate {c.alpha}, expected {want_alpha}"
            assert k == day.choose_k(c.alpha, cost, k_min, k_max), f"{what}: K is not choose_k of the estimate"
        s = c.stats
        assert s.rounds == len(rounds) and s.tokens == sum(a + 1 for _, a in rounds)
        assert sum(s.proposed) == sum(p for p, _ in rounds) and sum(s.accepted) == sum(a for _, a in rounds)

    check()


def test_bad_input_is_one_line_and_changes_nothing(day):
    for alpha in (-0.1, 1.5, math.nan):
        one_line_value_error(day.expected_tokens, alpha, 3, names="alpha")
        one_line_value_error(day.choose_k, alpha, 0.1, 1, 8, names="alpha")
        one_line_value_error(day.AdaptiveK, 1, 8, alpha=alpha, names="alpha")
    for k in (-1, 2.5):
        one_line_value_error(day.expected_tokens, 0.5, k)
    for k_min, k_max in ((5, 2), (0, 4), (-1, 3), (1, 0), (1.5, 4)):
        one_line_value_error(day.choose_k, 0.5, 0.1, k_min, k_max, names="k_m")      # k_min or k_max
        one_line_value_error(day.AdaptiveK, k_min, k_max, names="k_m")
    for cost in (-0.5, math.inf, math.nan):
        one_line_value_error(day.choose_k, 0.5, cost, 1, 8, names="cost")
        one_line_value_error(day.AdaptiveK, 1, 8, cost=cost, names="cost")
    for half_life in (0, -2.0, math.inf):
        one_line_value_error(day.AdaptiveK, 1, 8, half_life=half_life, names="half_life")
    c = day.AdaptiveK(1, 8)
    c.update(4, 2)
    before = (c.k, c.alpha, list(c.stats.proposed), list(c.stats.judged), list(c.stats.accepted), c.stats.rounds)
    for p, a in ((2, 3), (-1, 0), (3, -1), (2.5, 1)):
        one_line_value_error(c.update, p, a)
        after = (c.k, c.alpha, list(c.stats.proposed), list(c.stats.judged), list(c.stats.accepted), c.stats.rounds)
        assert after == before, f"update({p}, {a}) raised but changed the controller: {before} -> {after}"
    one_line_value_error(day.AcceptanceStats().record, 1, 2)


# ---- the engine and the CLI -----------------------------------------------------------------------------------
N = 24                                       # new tokens per generation (right drafts: 2 N, for K to reach 8)
PROMPTS = ("Hello hello hello hello", "abcabcabcabcabc")


def _engine(day, model, track, sizes, paged, draft=None, k="auto"):
    """The engine with YOUR AdaptiveK (reference kernels, loop and caches in the simulator, the
    track's on a GPU); draft replaces the n-gram drafter."""
    from shared.engine import Engine
    e = Engine(str(model), track=track, dtype="fp32", paged=False, graphs=False, block_size=4)
    table = sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})
    e.ops = Ops(track, overrides={**table, "AdaptiveK": day.AdaptiveK,
                                  **({"ngram_draft": draft} if draft is not None else {})})
    e.use_cache, e.use_paged = True, paged
    e.speculative, e.spec_k = "ngram", k
    return e


class Drafter:
    """draft(context, n) that records each n it was asked for. full: prompt + plain decoding's
    tokens. right: the plain continuation; wrong: it + 1 (never accepted); garbage: seeded noise."""

    def __init__(self, kind, full, vocab):
        self.kind, self.full, self.vocab, self.asked = kind, full, vocab, []

    def __call__(self, ctx, n):
        self.asked.append(n)
        if self.kind == "ngram":
            return reference.ngram_draft(ctx, n)
        right = self.full[len(ctx):len(ctx) + n]
        if self.kind == "right":
            return right
        if self.kind == "wrong":
            return [(t + 1) % self.vocab for t in right]
        rng = random.Random(len(ctx))
        return [rng.randrange(self.vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def plain_runs(day, tiny_model, track, sizes):
    base = _engine(day, tiny_model, track, sizes, paged=False)
    base.speculative = None
    return {p: list(base.generate_ids(base.prompt_ids(p), max_new_tokens=2 * N, ignore_eos=True)) for p in PROMPTS}


@pytest.mark.parametrize("kind, paged", [("ngram", False), ("ngram", True), ("right", False), ("right", True),
                                         ("wrong", True), ("garbage", False)])
def test_engine_auto_equals_plain_and_keeps_k_in_bounds(day, tiny_model, track, sizes, plain_runs, paged, kind):
    """spec_k="auto": plain greedy's tokens whatever the drafter proposes; every round drafts at
    most the K your controller chose (1..8); wrong drafts bring K to 1, right ones to 8; the
    footer has tokens per step and acceptance by position; every block is back in the pool."""
    from shared.engine.speculative import AUTO_K
    n = 2 * N if kind == "right" else N
    for prompt, want in list(plain_runs.items())[:2 if kind == "ngram" else 1]:
        want = want[:n]
        probe = _engine(day, tiny_model, track, sizes, paged)
        ids = probe.prompt_ids(prompt)
        drafter = Drafter(kind, ids + want, probe.config.vocab_size)
        e = _engine(day, tiny_model, track, sizes, paged, draft=drafter)
        got = list(e.generate_ids(ids, max_new_tokens=n, ignore_eos=True))
        where = f"{kind} drafts, {'paged' if paged else 'static'} cache, {prompt!r}"
        assert got == want, f"{where}: spec_k='auto' differs from plain greedy decoding at token " \
                            f"{next(i for i, (a, b) in enumerate(zip(got + [-1], want + [-2])) if a != b)}"
        s = e.stats.spec
        assert s.ks and all(AUTO_K[0] <= k <= AUTO_K[1] for k in s.ks), f"{where}: K per round {s.ks}"
        asked = drafter.asked
        assert len(asked) == len(s.ks) and all(n <= k for n, k in zip(asked, s.ks)), \
            f"{where}: the drafter was asked for {asked} with K {s.ks} -- never more than K"
        p = s.positions
        assert (p.rounds, sum(p.proposed), sum(p.accepted)) == (s.steps, s.drafted, s.accepted), \
            f"{where}: the controller saw {p.rounds} rounds, {sum(p.proposed)} drafts, {sum(p.accepted)} " \
            f"accepted; the loop ran {s.steps}, {s.drafted}, {s.accepted}"
        if kind == "wrong":
            assert s.ks[16:] and set(s.ks[16:]) == {AUTO_K[0]}, f"{where}: K per round {s.ks}, K=1 from round 16 on"
        if kind == "right":
            assert AUTO_K[1] in s.ks[:16], f"{where}: K per round {s.ks}, K=8 within 16 rounds"
        text = s.describe(e.stats.new_tokens)
        assert "tokens per target step" in text and "K=auto" in text, text
        if s.accepted:
            assert "acceptance by draft position" in text, text
        backend = e.runner(len(ids) + n).backend
        assert e.runner(len(ids) + n).cached == 0
        if paged:
            assert backend.allocator.num_free == backend.num_blocks, \
                f"{where}: {backend.allocator.num_free} of {backend.num_blocks} blocks free after the generation"


def test_engine_fixed_k_keeps_its_k_and_reports_positions(day, tiny_model, track, sizes, plain_runs):
    prompt, want = next(iter(plain_runs.items()))
    want = want[:N]
    probe = _engine(day, tiny_model, track, sizes, False)
    ids = probe.prompt_ids(prompt)
    e = _engine(day, tiny_model, track, sizes, False, draft=Drafter("right", ids + want, probe.config.vocab_size),
                k=3)
    assert list(e.generate_ids(ids, max_new_tokens=N, ignore_eos=True)) == want
    s = e.stats.spec
    assert set(s.ks) == {3} and s.by_position() == [1.0, 1.0, 1.0], (s.ks, s.by_position())
    assert "acceptance by draft position: 100% 100% 100%" in s.describe(e.stats.new_tokens)


def test_engine_refuses_bad_k_in_one_line(tiny_model, monkeypatch):
    from shared.course import registry
    from shared.engine import Engine
    for k in ("Auto", "fast", 2.5, 0, None):
        one_line_value_error(Engine, str(tiny_model), dtype="fp32", speculative="ngram", spec_k=k)
    done = registry.finished("solutions") - {38}          # the days track with everything but day 38 finished
    monkeypatch.setattr(registry, "finished", lambda track: done)
    with pytest.raises(ValueError) as e:
        Engine(str(tiny_model), track="days", dtype="fp32", simulate=True, speculative="ngram", spec_k="auto")
    assert "day 38" in str(e.value) and "\n" not in str(e.value), e.value


def test_cli_auto_prints_the_same_text_and_refuses_bad_flags(tiny_model, monkeypatch, capsys):
    def gen(*flags):
        return subprocess.run([sys.executable, "-m", "shared.cli", "generate", "la la la la la la", "--model",
                               str(tiny_model), "--track", "solutions", "--max-new-tokens", "12", *flags],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    spec, base = gen("--speculative", "ngram", "--spec-k", "auto"), gen()
    assert spec.returncode == 0 and base.returncode == 0, spec.stderr + base.stderr
    assert spec.stdout == base.stdout, "--spec-k auto must print the same text as plain greedy decoding"
    assert "K=auto" in spec.stderr and "tokens per target step" in spec.stderr, spec.stderr
    from shared import cli
    monkeypatch.setattr(cli.threads, "configure", lambda: None)
    assert_cli_refuses(["generate", "la la", "--model", str(tiny_model), "--track", "solutions"],
                       [("--speculative", "ngram", "--spec-k", "fast"), ("--speculative", "ngram", "--spec-k", "2.5"),
                        ("--spec-k", "auto"), ("--speculative", "ngram", "--spec-k", "17")], capsys)


# ---- GPU: SmolLM2, the track's components, adaptive vs fixed K ----------------------------------------------
GROUNDED = ("Copy the following list exactly, one item per line, then stop.\n"
            "1. The quick brown fox jumps over the lazy dog.\n2. Pack my box with five dozen liquor jugs.\n"
            "3. How vexingly quick daft zebras jump.\n4. Sphinx of black quartz, judge my vow.\n"
            "5. The five boxing wizards jump quickly.\n6. Jackdaws love my big sphinx of quartz.\n")
OPEN = "Write a short story about a lighthouse keeper."


def _smol(day, smollm2, track, dtype, paged=None, k="auto"):
    from shared.engine import Engine
    e = Engine(str(smollm2), track=track, dtype=dtype, paged=paged)
    e.ops = Ops(track, overrides={"AdaptiveK": day.AdaptiveK})
    e.speculative, e.spec_k = "ngram", k
    return e


@pytest.mark.gpu
@pytest.mark.model
@pytest.mark.parametrize("paged", [False, True])
def test_smollm2_fp32_auto_equals_plain_greedy(day, track, smollm2, paged):
    """fp32, the track's kernels and graphs: spec_k='auto' gives plain greedy's tokens with the n-gram
    drafter and an 8-layer self-draft, on a grounded and an open-ended prompt; K stays in 1..8."""
    from shared.engine.speculative import AUTO_K
    e = _smol(day, smollm2, track, "fp32", paged=paged)
    for method, layers in (("ngram", None), ("draft", 8)):
        for prompt in (GROUNDED, OPEN):
            ids = e.prompt_ids(prompt, chat=True)
            e.speculative, e.draft_layers = method, layers
            got = list(e.generate_ids(ids, max_new_tokens=96))
            ks = e.stats.spec.ks
            e.speculative, e.draft_layers = None, None
            want = list(e.generate_ids(ids, max_new_tokens=96))
            assert got == want, f"fp32 SmolLM2, {method} auto: differs from plain greedy at token " \
                                f"{next(i for i, (a, b) in enumerate(zip(got + [-1], want + [-2])) if a != b)}"
            assert all(AUTO_K[0] <= k <= AUTO_K[1] for k in ks), ks


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_adaptive_vs_fixed_k(day, track, smollm2):
    """fp16, graphs, the paged cache (the engine's default: a verify costs about 1.4 decode steps there,
    where the static cache attends row by row), n-gram drafts: decode tok/s of plain decoding, fixed K
    1, 2, 4, 8 and K=auto (1..8) on a grounded and an open-ended prompt, best of 5 runs each after a warm-up
    (graphs captured; the controller picks the same K sequence every run: it reads no clock), same
    run. Fails if adaptive K is more than 5% slower than the best fixed K on either prompt; its
    ratio to plain decoding (the open-ended prompt's >= 0.95x goal) is recorded."""
    import torch
    e = _smol(day, smollm2, track, "fp16")
    result = {"model": "SmolLM2-135M", "dtype": "fp16", "gpu": torch.cuda.get_device_name(), "method": "ngram",
              "cache": "paged" if e.use_paged else "static",
              **{f"{n}_from": e.ops.source(n).describe(track) for n in ("AdaptiveK", "speculative", "Verifier")}}

    def timed(ids):
        list(e.generate_ids(ids, max_new_tokens=128, ignore_eos=True))      # warm: graphs captured
        best = 0.0
        for _ in range(5):
            out = list(e.generate_ids(ids, max_new_tokens=128, ignore_eos=True))
            best = max(best, e.stats.decode_tok_s)
        return out, best

    for family, prompt in (("grounded", GROUNDED), ("open", OPEN)):
        ids = e.prompt_ids(prompt, chat=True)
        e.speculative = None
        plain_out, plain_tok_s = timed(ids)
        result[f"{family}_plain_tok_s"] = plain_tok_s
        e.speculative = "ngram"
        for k in (1, 2, 4, 8, "auto"):
            e.spec_k = k
            out, tok_s = timed(ids)
            s, key = e.stats.spec, f"{family}_k{k}"
            agree = next((i for i, (a, b) in enumerate(zip(out, plain_out)) if a != b), len(out))
            result.update({f"{key}_tok_s": tok_s, f"{key}_vs_plain": tok_s / plain_tok_s,
                           f"{key}_tokens_per_step": s.tokens_per_step(e.stats.new_tokens),
                           f"{key}_acceptance_by_position": [round(r, 3) for r in s.by_position()],
                           f"{key}_mean_k": sum(s.ks) / len(s.ks) if s.ks else None,
                           f"{key}_tokens_equal_to_plain": agree})
        fixed = {k: result[f"{family}_k{k}_tok_s"] for k in (1, 2, 4, 8)}
        best = max(fixed, key=fixed.get)
        result[f"{family}_best_fixed_k"] = best
        result[f"{family}_auto_vs_best_fixed"] = result[f"{family}_kauto_tok_s"] / fixed[best]
    record_bench("day_38_adaptive_vs_fixed_k", result)
    for family in ("grounded", "open"):
        assert result[f"{family}_auto_vs_best_fixed"] >= 0.95, (
            f"{family} prompt: K=auto decodes at {result[f'{family}_auto_vs_best_fixed']:.3f}x the best fixed K "
            f"(K={result[f'{family}_best_fixed_k']}): more than 5% slower -- {result}")
