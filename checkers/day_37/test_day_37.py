"""Day 37 checker: spec_sample -- speculative sampling keeps the target's distribution. Run: pytest checkers/day_37

Deterministic properties first, on random distributions over toy vocabularies: q == p keeps every
draft; a draft the target gives probability 0 is never kept, nor drawn as its own replacement;
the output is 1..K+1 tokens, a prefix of the drafts and one more, each with p > 0 in its row;
temperature 0 (one-hot rows) is greedy speculative decoding exactly; K = 0; an all-zero
residual; bad input; the same seed gives the same tokens; at most two host reads per call,
whatever K.

Then the statistics. A toy model over V = 8 tokens -- a bigram table, so the target's and the
draft's next-token distributions depend on the previous token, as a real model's do --
generates sequences the way the engine's loop would: draft K = 2 tokens, spec_sample against
the target's rows, go on from the last token. Pearson chi-square tests compare the first token
with the target's distribution and each later pair of consecutive tokens with the target's
joint law (goodness of fit), and both with plain sampling from the target's logits (two-sample
homogeneity), at temperature 1 and 0.7 with a random draft, and at temperature 1 with a
deterministic drafter (one-hot q). Seeds are fixed, and each test's level is ALPHA = 1e-8: a
correct rule, whatever order it draws its random numbers in, fails a run with probability
below 1e-6; each wrong rule in mutants.toml fails by a wide margin.
"""
import bisect
import math
import random
from statistics import NormalDist
from unittest import mock

import pytest
import torch

from shared import reference
from shared.reference.spec_sampling import sample_probs

ALPHA = 1e-8             # per chi-square test; about 30 of them: a correct rule fails a run w.p. < 1e-6
V, K, L, START = 8, 2, 4, 0
TRIALS = 12_000          # sequences per configuration
CONFIGS = [(1.0, "sample"), (0.7, "sample"), (1.0, "one-hot")]
CONFIG_IDS = ["T=1", "T=0.7", "T=1-one-hot-draft"]


# ---- chi-square tests ---------------------------------------------------------------------------------
def chi2_critical(df: int, alpha: float = ALPHA) -> float:
    """The chi-square value exceeded with probability alpha: scipy's when installed, else the
    Wilson-Hilferty cube-root normal approximation (conservative this far in the tail: the true
    exceedance probability at its value is 0.1-0.9 x alpha for df 1..63, checked with mpmath)."""
    try:
        from scipy.stats import chi2
        return float(chi2.isf(alpha, df))
    except ImportError:
        z, a = NormalDist().inv_cdf(1 - alpha), 2 / (9 * df)
        return df * (1 - a + z * math.sqrt(a)) ** 3


def pooled(probs, *counts, min_expected=10.0):
    """Cells whose expected count is under min_expected, merged into one (Pearson's approximation
    needs counts that are not tiny). probs: the expected share of each cell (float64, sums to 1)."""
    n = min(float(c.sum()) for c in counts)
    small = probs * n < min_expected
    if int(small.sum()) < 2:
        return (probs, *counts)
    keep = ~small
    return (torch.cat([probs[keep], probs[small].sum().view(1)]),
            *[torch.cat([c[keep], c[small].sum().view(1)]) for c in counts])


def goodness_of_fit(counts, probs, what):
    """counts (how often each cell came out) vs the exact probabilities of the target's law."""
    counts, probs = counts.double(), probs.double() / probs.double().sum()
    n = float(counts.sum())
    outside = int(counts[probs == 0].sum())
    assert outside == 0, f"{what}: {outside} of {n:.0f} outcomes have probability 0 under the target"
    probs, counts = pooled(probs[probs > 0], counts[probs > 0])
    expected = n * probs
    stat, df = float(((counts - expected) ** 2 / expected).sum()), probs.numel() - 1
    crit = chi2_critical(df)
    assert stat < crit, (
        f"{what}: the tokens do not follow the target's distribution (chi-square {stat:.1f} > {crit:.1f}, "
        f"{df} degrees of freedom, level {ALPHA:g}); counts {counts.long().tolist()}, expected "
        f"{[round(float(e), 1) for e in expected]} -- see the lesson's 'Why it is exact'")


def homogeneity(counts, plain, probs, what):
    """Two samples -- spec_sample's and plain sampling's -- from one distribution? (Pearson's
    two-sample test; cells pooled by the target's probabilities.)"""
    counts, plain, probs = counts.double(), plain.double(), probs.double() / probs.double().sum()
    probs, counts, plain = pooled(probs, counts, plain)
    n1, n2 = float(counts.sum()), float(plain.sum())
    both = counts + plain
    live = both > 0
    e1, e2 = both[live] * n1 / (n1 + n2), both[live] * n2 / (n1 + n2)
    stat = float(((counts[live] - e1) ** 2 / e1 + (plain[live] - e2) ** 2 / e2).sum())
    df = int(live.sum()) - 1
    crit = chi2_critical(df)
    assert stat < crit, (
        f"{what}: speculative sampling and plain sampling give different distributions (two-sample chi-square "
        f"{stat:.1f} > {crit:.1f}, {df} degrees of freedom); spec {counts.long().tolist()}, plain "
        f"{plain.long().tolist()}")


# ---- the toy model and its two samplers ---------------------------------------------------------------
def toy_model(temperature, seed=37):
    """Bigram logits: row a = the next-token logits after token a. The draft is correlated with
    the target (a draft model is a worse copy of it), not equal."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(V, V, generator=g) * 1.5
    draft = 0.6 * target + torch.randn(V, V, generator=g)
    return target, sample_probs(target, temperature), sample_probs(draft, temperature)


_RUNS = {}


def speculative_sequences(spec_sample, temperature, drafter, device, seed=1):
    """TRIALS sequences of L tokens after START, each made step by step as the engine would: draft
    K tokens (drafter "sample": x_i ~ q[previous token]; "one-hot": x_i = argmax q[previous], a
    deterministic drafter, so its q rows are one-hot), then spec_sample(P rows, q rows, drafts),
    and continue from its last token. Cached per (function, config): several tests read one run."""
    key = (spec_sample, temperature, drafter, str(device))
    if key in _RUNS:
        return _RUNS[key]
    _, P, Q = toy_model(temperature)
    cdf = Q.double().cumsum(1).tolist()
    greedy = Q.argmax(1).tolist()
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    Pd, Qd, eye = P.to(device), Q.to(device), torch.eye(V, device=device)
    out = torch.empty(TRIALS, L, dtype=torch.long)
    for t in range(TRIALS):
        seq, c = [], START
        while len(seq) < L:
            prev, drafts = [c], []
            for _ in range(K):
                a = prev[-1]
                x = (min(bisect.bisect_right(cdf[a], rng.random() * cdf[a][-1]), V - 1) if drafter == "sample"
                     else greedy[a])
                drafts.append(x)
                prev.append(x)
            q = Qd[prev[:K]] if drafter == "sample" else eye[drafts]
            got = spec_sample(Pd[prev], q, drafts, gen)
            assert 1 <= len(got) <= K + 1, f"spec_sample with K={K} drafts must return 1..{K + 1} tokens, got {got}"
            seq += [int(y) for y in got]
            c = seq[-1]
        out[t] = torch.tensor(seq[:L])
    _RUNS[key] = out
    return out


def plain_sequences(temperature, seed=2):
    """The same number of sequences by plain sampling from the target's logits (reference `sample`)."""
    logits, _, _ = toy_model(temperature)
    g = torch.Generator().manual_seed(seed)
    c, cols = torch.full((TRIALS,), START, dtype=torch.long), []
    for _ in range(L):
        c = reference.sample(logits[c], temperature, generator=g)
        cols.append(c)
    return torch.stack(cols, 1)


def pair_probs(P, j):
    """The target's law of (y[j-1], y[j]) as V*V cells: marginal of y[j-1] times P[y[j-1], :]."""
    P = P.double()
    m = P[START]
    for _ in range(j - 1):
        m = m @ P
    return (m[:, None] * P).reshape(-1)


@pytest.mark.parametrize("temperature, drafter", CONFIGS, ids=CONFIG_IDS)
def test_first_token_follows_the_target(day, device, temperature, drafter):
    _, P, _ = toy_model(temperature)
    spec = speculative_sequences(day.spec_sample, temperature, drafter, device)
    what = f"the first token (temperature {temperature}, {drafter} draft)"
    counts = torch.bincount(spec[:, 0], minlength=V)
    goodness_of_fit(counts, P[START], what)
    homogeneity(counts, torch.bincount(plain_sequences(temperature)[:, 0], minlength=V), P[START], what)


@pytest.mark.parametrize("temperature, drafter", CONFIGS, ids=CONFIG_IDS)
def test_later_tokens_follow_the_target(day, device, temperature, drafter):
    """Each pair (y[j-1], y[j]), j = 1..L-1: accepted drafts, replacements and bonus tokens (the
    first step's bonus is y[K] when every draft was kept), across step boundaries too."""
    _, P, _ = toy_model(temperature)
    spec = speculative_sequences(day.spec_sample, temperature, drafter, device)
    plain = plain_sequences(temperature)
    for j in range(1, L):
        what = f"tokens {j - 1} and {j} (temperature {temperature}, {drafter} draft, K={K})"
        cells = lambda s: torch.bincount(s[:, j - 1] * V + s[:, j], minlength=V * V)
        goodness_of_fit(cells(spec), pair_probs(P, j), what)
        homogeneity(cells(spec), cells(plain), pair_probs(P, j), what)


def test_k_zero_is_plain_sampling(day, device):
    """No drafts: one token from p_0."""
    g = torch.Generator(device=device).manual_seed(5)
    onehot = torch.zeros(1, 9, device=device)
    onehot[0, 6] = 1.0
    empty = torch.zeros(0, 9, device=device)
    got = day.spec_sample(onehot, empty, [], g)
    assert got == [6], f"K = 0 with p_0 one-hot at 6: expected [6], got {got}"
    p = sample_probs(torch.randn(1, V, generator=torch.Generator().manual_seed(3)) * 1.5, 1.0).to(device)
    empty = torch.zeros(0, V, device=device)
    tokens = [day.spec_sample(p, empty, [], g) for _ in range(3000)]
    assert all(len(t) == 1 for t in tokens), "K = 0 must return exactly one token"
    goodness_of_fit(torch.bincount(torch.tensor([t[0] for t in tokens]), minlength=V), p[0].cpu(),
                    "K = 0 (plain sampling from p_0)")


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 0, 1.0), (1.3, 6, 0.8)])
def test_sample_probs_is_what_sample_draws(temperature, top_k, top_p):
    """The helper the tests above (and the engine's caller) use: the probabilities `sample` draws
    from with the same flags -- so speculative sampling keeps plain sampling's distribution."""
    logits = torch.randn(V, generator=torch.Generator().manual_seed(9)) * 1.5
    draws = reference.sample(logits.repeat(20_000, 1), temperature, top_k, top_p, torch.Generator().manual_seed(9))
    goodness_of_fit(torch.bincount(draws, minlength=V), sample_probs(logits, temperature, top_k, top_p),
                    f"sample_probs(T={temperature}, top_k={top_k}, top_p={top_p}) vs sample")
    greedy = sample_probs(logits[None], 0.0)
    assert greedy.sum() == 1 and greedy[0, int(logits.argmax())] == 1, "temperature 0: one-hot at the argmax"


# ---- deterministic properties --------------------------------------------------------------------------
def random_rows(rows, vocab, seed, temperature=0.7, sparse=False, device="cpu"):
    """Random distributions; sparse: top-k masked (exact zeros), as sampling with top_k gives."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 2
    top_k = int(torch.randint(1, vocab, (1,), generator=g)) if sparse else 0
    return sample_probs(logits, temperature, top_k=top_k).to(device)


def draw(q, g):
    """One draft per row of q, drawn from that row (on the CPU: the checker's own randomness)."""
    return torch.multinomial(q.cpu(), 1, generator=g)[:, 0].tolist() if q.shape[0] else []


def test_q_equal_to_p_keeps_every_draft(day, device):
    g, cpu = torch.Generator(device=device).manual_seed(0), torch.Generator().manual_seed(0)
    for case in range(120):
        k, vocab = case % 7 + 1, 5 + case % 12
        p = random_rows(k + 1, vocab, case, sparse=case % 2 == 1, device=device)
        drafts = draw(p[:k], cpu)
        got = day.spec_sample(p, p[:k].clone(), drafts, g)
        assert got[:k] == drafts and len(got) == k + 1, (
            f"q == p (case {case}, K={k}): p/q = 1 at every draft, so all {k} must be kept and one bonus token "
            f"added: drafts {drafts}, got {got}")
        assert float(p[k, got[k]]) > 0, f"case {case}: the bonus token {got[k]} has probability 0 in p_K"


def test_a_draft_the_target_rules_out_is_never_kept(day, device):
    """p_i(t) = 0 and q_i one-hot at t = x_i: p/q = 0, always rejected, and the replacement comes
    from the residual, which has no mass at t."""
    g, cpu = torch.Generator(device=device).manual_seed(1), torch.Generator().manual_seed(1)
    for case in range(100):
        vocab, at = 6 + case % 5, case % 3                  # the ruled-out draft sits at position `at`
        p = random_rows(4, vocab, 100 + case, device=device)
        q = p[:3].clone()
        t = case % vocab
        p[at, t] = 0.0
        p[at] /= p[at].sum()
        q[at] = 0.0
        q[at, t] = 1.0
        drafts = draw(q[:at], cpu) + [t] + draw(q[at + 1:], cpu)
        got = day.spec_sample(p, q, drafts, g)
        where = f"case {case}: p_{at}({t}) = 0, q_{at} one-hot at {t}, drafts {drafts}, got {got}"
        assert got[:at] == drafts[:at], f"{where}: the drafts before it have q == p and must be kept"
        assert len(got) == at + 1, f"{where}: draft {at} must be rejected (p/q = 0) and the output stop after it"
        assert got[at] != t and float(p[at, got[at]]) > 0, \
            f"{where}: the replacement must come from max(0, p - q), which has no mass at {t}"


def test_outputs_are_well_formed(day, device):
    """1..K+1 tokens; all but the last are the drafts' prefix; every token has p > 0 in its row;
    after a rejection the replacement is never the rejected draft (the residual is 0 there)."""
    g, cpu = torch.Generator(device=device).manual_seed(2), torch.Generator().manual_seed(2)
    lengths = set()
    for case in range(300):
        k, vocab = case % 8, 5 + case % 12
        p = random_rows(k + 1, vocab, 1000 + case, temperature=1.0, sparse=case % 3 == 0, device=device)
        q = random_rows(k, vocab, 5000 + case, temperature=1.0, sparse=case % 4 == 1, device=device)
        drafts = draw(q, cpu)
        got = day.spec_sample(p, q, drafts, g)
        where = f"case {case}: K={k}, drafts {drafts}, got {got}"
        assert isinstance(got, list) and all(isinstance(y, int) for y in got), f"{where}: a list of Python ints"
        n = len(got) - 1
        assert 0 <= n <= k, f"{where}: 1..K+1 tokens"
        assert got[:n] == drafts[:n], f"{where}: the output must start with the kept drafts, in order"
        bad = [i for i, y in enumerate(got) if not 0 <= y < vocab or float(p[i, y]) <= 0]
        assert not bad, f"{where}: token {bad[0]} has probability 0 in its target row {bad[0]}"
        if n < k:
            assert got[n] != drafts[n], f"{where}: draft {n} was rejected, so it cannot be its own replacement"
        lengths.add(len(got))
    assert len(lengths) >= 4, f"300 random cases gave only output lengths {sorted(lengths)}"


def test_temperature_zero_is_greedy_speculative_decoding(day, device):
    """One-hot p and q (temperature 0): keep the drafts that equal the target's argmax, then the
    argmax of the first row that disagrees (or of row K) -- day 35's rule, with no randomness."""
    g = torch.Generator(device=device).manual_seed(3)
    for case in range(150):
        k, vocab = case % 6, 7 + case % 9
        gen = torch.Generator().manual_seed(case)
        target = torch.randn(k + 1, vocab, generator=gen)
        draft = torch.randn(k, vocab, generator=gen)
        agree = int(torch.randint(0, k + 1, (1,), generator=gen))
        draft[:agree] = target[:agree]                   # the first `agree` drafts are the target's argmax
        p, q = sample_probs(target, 0.0).to(device), sample_probs(draft, 0.0).to(device)
        drafts, best = draft.argmax(1).tolist(), target.argmax(1).tolist()
        n = next((i for i in range(k) if drafts[i] != best[i]), k)
        want = drafts[:n] + [best[n]]
        got = day.spec_sample(p, q, drafts, g)
        assert got == want, (f"temperature 0 (case {case}): drafts {drafts}, target argmax {best}: "
                             f"expected {want}, got {got}")


def test_an_all_zero_residual_falls_back_to_p(day, device):
    """Rounded rows need not sum to exactly 1: here q >= p everywhere (q puts 0.01 extra on a token
    p rules out) and that token is drafted. It is always rejected and max(0, p - q) is all zero:
    the replacement must then come from p itself."""
    g = torch.Generator(device=device).manual_seed(4)
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], device=device)
    q = torch.tensor([[0.5, 0.5, 0.01, 0.0]], device=device)
    seen = set()
    for _ in range(60):
        got = day.spec_sample(p, q, [2], g)
        assert len(got) == 1 and got[0] in (0, 1), (
            f"p_0 = [0.5, 0.5, 0, 0], q_0 = [0.5, 0.5, 0.01, 0], draft 2: rejected, and the residual is all zero, so "
            f"the token must come from p_0 (0 or 1), got {got}")
        seen.add(got[0])
    assert seen == {0, 1}, f"the fallback must sample from p_0, not pick one token: saw only {seen}"


def one_line_value_error(fn, *args):
    with pytest.raises(ValueError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg, f"one line, please: {msg!r}"


def test_bad_input(day, device):
    p, q = random_rows(3, 6, 0, device=device), random_rows(2, 6, 1, device=device)
    one_line_value_error(day.spec_sample, p[:2], q, [1, 2])               # target_probs must have K + 1 rows
    one_line_value_error(day.spec_sample, p, q[:1], [1, 2])               # draft_probs must have K rows
    one_line_value_error(day.spec_sample, p, random_rows(2, 5, 2, device=device), [1, 2])   # V differs
    one_line_value_error(day.spec_sample, p, q, [1, 6])                   # an id out of range
    onehot = torch.zeros(2, 6, device=device)
    onehot[:, 3] = 1.0
    one_line_value_error(day.spec_sample, p, onehot, [3, 4])              # q_1(4) = 0: 4 could not have been drawn


def test_same_seed_same_tokens_and_inputs_unchanged(day, device):
    p, q = random_rows(5, 10, 7, temperature=1.0, device=device), random_rows(4, 10, 8, temperature=1.0, device=device)
    drafts = draw(q, torch.Generator().manual_seed(7))
    p0, q0 = p.clone(), q.clone()
    runs = []
    for _ in range(2):
        g = torch.Generator(device=device).manual_seed(11)
        runs.append([day.spec_sample(p, q, drafts, g) for _ in range(40)])
    assert runs[0] == runs[1], "the same generator seed must give the same tokens"
    assert torch.equal(p, p0) and torch.equal(q, q0), "spec_sample must not modify its inputs"


HOST_READS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


def count_host_reads(fn):
    """How many tensor -> host reads fn makes (.item(), int(t), .tolist(), if t: ...)."""
    seen = []

    def counting(name, original):
        def method(self, *a, **k):
            seen.append(name)
            return original(self, *a, **k)
        return method

    patches = [mock.patch.object(torch.Tensor, n, counting(n, getattr(torch.Tensor, n))) for n in HOST_READS]
    for p in patches:
        p.start()
    try:
        fn()
    finally:
        for p in patches:
            p.stop()
    return seen


def test_at_most_two_host_reads_per_call(day, device):
    """Not one per token: the kept count (with the q == 0 check) and the extra token."""
    for k in (1, 7):
        p, q = random_rows(k + 1, 12, k, device=device), random_rows(k, 12, 50 + k, device=device)
        drafts = draw(q, torch.Generator().manual_seed(k))
        g = torch.Generator(device=device).manual_seed(0)
        reads = count_host_reads(lambda: day.spec_sample(p, q, drafts, g))
        assert len(reads) <= 2, (
            f"K={k}: {len(reads)} host reads ({', '.join(reads)}): decide all K drafts on the device and read the "
            f"kept count once, choose the extra token's row with torch.where (no `if` on a tensor), read it once")


# ---- GPU -----------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_at_most_two_syncs_per_call_on_the_gpu(day, device):
    """The GPU's own count: torch's sync debug mode warns at every synchronising call."""
    import warnings
    for k in (1, 7):
        p, q = random_rows(k + 1, 49152, k, device=device), random_rows(k, 49152, 50 + k, device=device)
        drafts = draw(q, torch.Generator().manual_seed(k))
        g = torch.Generator(device=device).manual_seed(0)
        day.spec_sample(p, q, drafts, g)                 # warm-up: first-call allocations
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                day.spec_sample(p, q, drafts, g)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0] for w in caught          # not the mode's own "prototype" notice
                 if "called a synchronizing" in str(w.message).lower()]
        assert len(syncs) <= 2, f"K={k}: {len(syncs)} synchronising calls, at most 2 expected: {syncs}"


@pytest.mark.gpu
@pytest.mark.bench
def test_cost_next_to_plain_sampling(day, device):
    """SmolLM2's vocabulary, K = 4: one spec_sample (two host reads) vs one plain `sample` of a row.
    Wall time with the syncs included (they are the cost); recorded, with a loose same-run ratio."""
    import time
    from shared.course.testing import record_bench
    k, vocab = 4, 49152
    p, q = random_rows(k + 1, vocab, 0, 1.0, device=device), random_rows(k, vocab, 1, 1.0, device=device)
    drafts = draw(q, torch.Generator().manual_seed(0))
    logits = torch.randn(vocab, device=device)
    g = torch.Generator(device=device).manual_seed(0)

    def wall_us(fn, reps=200):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1e6 / reps

    spec = wall_us(lambda: day.spec_sample(p, q, drafts, g))
    plain = wall_us(lambda: int(reference.sample(logits, 1.0, generator=g)))
    record_bench("day_37_spec_sample", {"vocab": vocab, "K": k, "spec_sample_us": round(spec, 1),
                                        "plain_sample_us": round(plain, 1), "ratio": round(spec / plain, 2)})
    assert spec < 10 * plain, f"spec_sample takes {spec:.0f} us, {spec / plain:.1f}x one plain sample ({plain:.0f} us)"
