"""Day 39 checker: what a speculative round costs, fitted from timed runs. Run: pytest checkers/day_39

Your fit against the properties of a least-squares line, not against one answer: on runs made
from a known cost (any units, any order, any lengths) it returns that cost; with noise its
residuals sum to zero and are uncorrelated with drafts per round, and moving the line raises the
squared error; equal drafts per round everywhere is a one-line ValueError (no slope), as are bad
runs. The prediction: speedup and the tokens a target needs from day 38's expected tokens.

The benchmark (`tinyinfer bench --speculative`, tiny model, simulator): the round cost it reports
is your fit of its own n-gram runs, and each run's predicted speedup is its tokens per step over
that line. GPU
(bench marker): SmolLM2, grounded prompts, n-gram drafts, greedy-exact; the speedup and the
fitted round cost are recorded, and the run fails under SPEEDUP_FLOOR.
"""
import math
import random

import pytest

from shared.course.testing import record_bench
from shared.reference.acceptance import expected_tokens
from shared.reference.round_cost import Run

SPEEDUP_GOAL = 2.4     # issue 16's target on grounded prompts (prompt lookup's published 2.4x)
SPEEDUP_FLOOR = 1.0    # what the bench asserts today: speculation must not slow grounded prompts down


def runs_from(cost_a, cost_b, points, rng, step=0.002, noise=0.0):
    """Timed runs whose rounds cost exactly cost_a + cost_b * (drafts per round) plain steps, give or take noise."""
    out = []
    for x in points:
        rounds = rng.randint(3, 200)
        drafted = round(x * rounds)
        y = cost_a + cost_b * drafted / rounds
        y *= 1 + noise * rng.uniform(-1, 1)
        out.append(Run(rounds, drafted, y * step * rounds, step))
    return out


def one_line_value_error(fn, *args, names=None):
    with pytest.raises(ValueError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg, f"one line, please: {msg!r}"
    for name in names or ():
        assert name in msg, f"the message should name {name!r}: {msg!r}"


@pytest.mark.parametrize("seed", range(6))
def test_a_known_cost_comes_back(day, seed):
    rng = random.Random(seed)
    a, b = rng.uniform(0.9, 2.5), rng.uniform(0.0, 0.6)
    runs = runs_from(a, b, [rng.uniform(0, 8) for _ in range(rng.randint(2, 12))], rng,
                     step=rng.choice([1e-4, 2.5e-3, 0.4]))
    got = day.fit_round_cost(runs)
    assert math.isclose(got.overhead, a, rel_tol=1e-9, abs_tol=1e-9) and \
        math.isclose(got.per_draft, b, rel_tol=1e-9, abs_tol=1e-9), \
        f"runs made from overhead {a:.4f} + {b:.4f} per draft gave {got}"


def test_per_run_units(day):
    """A run of 50 rounds that took 150 plain steps of time: 3 steps per round, whatever the clock's unit."""
    for step in (0.002, 2.0, 2000.0):
        r = Run(rounds=50, drafted=120, seconds=150 * step, step_seconds=step)
        assert math.isclose(day.steps_per_round(r), 3.0), f"step_seconds={step}: {day.steps_per_round(r)}"
        assert math.isclose(day.drafts_per_round(r), 2.4)


@pytest.mark.parametrize("seed", range(4))
def test_the_fit_is_least_squares(day, seed):
    """Noisy runs: residuals sum to zero, are uncorrelated with x, and any other line fits worse."""
    rng = random.Random(100 + seed)
    runs = runs_from(1.3, 0.15, [rng.uniform(0, 6) for _ in range(9)], rng, noise=0.2)
    got = day.fit_round_cost(runs)
    xs = [r.drafted / r.rounds for r in runs]
    ys = [r.seconds / r.step_seconds / r.rounds for r in runs]
    res = [y - got.steps(x) for x, y in zip(xs, ys)]
    scale = max(map(abs, ys))
    assert abs(sum(res)) < 1e-9 * scale * len(res), f"residuals sum to {sum(res):.3g}: the line misses the means"
    assert abs(sum(r * x for r, x in zip(res, xs))) < 1e-9 * scale * sum(xs), "residuals correlate with x"
    sse = sum(r * r for r in res)
    for da, db in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
        moved = sum((y - (got.overhead + da) - (got.per_draft + db) * x) ** 2 for x, y in zip(xs, ys))
        assert moved > sse, f"moving the line by ({da}, {db}) fits better: not least squares"


def test_each_run_weighs_the_same_and_order_does_not_matter(day):
    """One point per run, whatever its length: a long run is not counted once per round."""
    rng = random.Random(7)
    short = [Run(4, 0, 4 * 1.0 * 0.01, 0.01), Run(4, 8, 4 * 1.8 * 0.01, 0.01)]
    long_ = Run(4000, 16000, 4000 * 1.0 * 0.01, 0.01)      # 4 drafts per round, 1.0 step per round
    runs = short + [long_]
    got = day.fit_round_cost(runs)
    # three equal-weight points (0, 1.0), (2, 1.8), (4, 1.0): slope 0, intercept 1.2667
    assert math.isclose(got.per_draft, 0.0, abs_tol=1e-9) and math.isclose(got.overhead, 3.8 / 3, rel_tol=1e-9), \
        f"{got}: a run's weight must not grow with its rounds"
    shuffled = runs[:]
    rng.shuffle(shuffled)
    again = day.fit_round_cost(shuffled)
    assert math.isclose(again.overhead, got.overhead) and math.isclose(again.per_draft, got.per_draft)


def test_no_slope_and_bad_runs_are_one_line(day):
    same = [Run(10, 40, 0.03, 0.002), Run(20, 80, 0.05, 0.002), Run(5, 20, 0.02, 0.002)]
    one_line_value_error(day.fit_round_cost, same, names=["K"])
    one_line_value_error(day.fit_round_cost, same[:1])
    one_line_value_error(day.fit_round_cost, [])
    for bad in (Run(0, 0, 1.0, 0.1), Run(3, -1, 1.0, 0.1), Run(3, 1, 0.0, 0.1), Run(3, 1, 1.0, -0.1),
                Run(3, 1, float("inf"), 0.1), Run(3, 1, float("nan"), 0.1), (3, 1, 1.0, 0.1)):
        one_line_value_error(day.steps_per_round, bad)
        one_line_value_error(day.fit_round_cost, [Run(4, 0, 0.1, 0.01), bad])


@pytest.mark.parametrize("alpha,k", [(0.0, 4), (1.0, 4), (0.6, 1), (0.8, 7), (0.35, 3)])
def test_prediction_is_expected_tokens_over_the_round(day, alpha, k):
    cost = day.RoundCost(overhead=1.15, per_draft=0.07)
    want = expected_tokens(alpha, k) / (1.15 + 0.07 * k)
    assert math.isclose(cost.speedup(alpha, k), want, rel_tol=1e-9), (alpha, k, cost.speedup(alpha, k), want)
    assert math.isclose(cost.tokens_needed(2.4, k), 2.4 * (1.15 + 0.07 * k), rel_tol=1e-9)
    # the definitions agree: a run that yields tokens_needed(s) tokens per round is s times faster
    assert math.isclose(cost.tokens_needed(cost.speedup(alpha, k), k), expected_tokens(alpha, k), rel_tol=1e-9)


@pytest.fixture(scope="module")
def cpu_report():
    from shared import spec_bench
    return spec_bench.run("tiny", dtype="fp32", methods=("ngram",), k=3, new_tokens=12, per_family=3,
                          progress=lambda line: None)


def test_the_benchmark_reports_your_fit(day, cpu_report):
    """The bench's round cost (the track's fit: the reference until day 39 passes) is your fit of
    its own n-gram runs, and each run's prediction is its tokens per step over that line."""
    rows = cpu_report["rows"]
    runs = [Run(**r["ngram"]["run"]) for r in rows]
    fit = cpu_report["round_cost"]["ngram"]
    if len({r.drafted / r.rounds for r in runs}) < 2:
        assert fit is None
        return
    mine = day.fit_round_cost(runs)
    assert math.isclose(fit["overhead"], mine.overhead, rel_tol=1e-6, abs_tol=1e-9) and \
        math.isclose(fit["per_draft"], mine.per_draft, rel_tol=1e-6, abs_tol=1e-9), (fit, mine)
    for r, run in zip(rows, runs):
        want = r["ngram"]["tokens_per_step"] / mine.steps(run.drafted / run.rounds)
        assert math.isclose(r["ngram"]["predicted_vs_plain"], want, rel_tol=1e-6), r


@pytest.mark.bench
def test_bench_grounded_prompts_speed_up(day, track, smollm2):
    """SmolLM2 on the GPU, fp16, graphs: n-gram drafts (K = 4) on the grounded prompts vs plain
    greedy in the same run. Records the speedups, the fitted round cost and what 2.4x would need."""
    from shared import spec_bench
    report = spec_bench.run(str(smollm2), track=track, methods=("ngram",), k=4,
                            progress=lambda line: None)
    g = report["families"]["grounded"]["ngram"]
    cost = report["round_cost"]["ngram"]
    result = {"device": report["device"], "grounded_speedup": round(g["speedup_geomean"], 3),
              "grounded_tokens_per_step": round(g["tokens_per_step_mean"], 3),
              "open_speedup": round(report["families"]["open"]["ngram"]["speedup_geomean"], 3),
              "plain_tok_s": round(sum(r["plain_tok_s"] for r in report["rows"]) / len(report["rows"]), 1),
              "round_cost": cost, "goal": SPEEDUP_GOAL}
    if cost:
        fit = day.RoundCost(cost["overhead"], cost["per_draft"])
        result["tokens_per_step_for_goal_at_k4"] = round(fit.tokens_needed(SPEEDUP_GOAL, 4), 2)
    record_bench("day_39_spec_speedup_smollm2", result)
    assert g["all_equal_to_plain"] or report["dtype"] != "float32", "greedy speculative decoding changed the tokens"
    assert g["speedup_geomean"] >= SPEEDUP_FLOOR, (
        f"n-gram speculation on grounded prompts: {g['speedup_geomean']:.2f}x plain "
        f"({result['plain_tok_s']} tok/s plain): slower than not speculating -- see the lesson's round cost")
