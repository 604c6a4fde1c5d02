"""Day 39 -- what a speculative round costs, measured: the fit behind the speedup.

Lesson: notes/day_39_spec_bench.md        Check: pytest checkers/day_39

A speculative run is faster than plain decoding when its rounds yield more tokens than they cost:
speedup = tokens per round / (a round's time in plain decode steps). Day 38 assumed the cost of a
round of K drafts (1 + cost * K rounds without drafts). This day measures it. `tinyinfer bench
--speculative` times each prompt plainly and speculatively in the same run; per run that gives
the time of one round in plain steps and the drafts per round, and the n-gram drafter's rounds
draft anywhere from 0 to K tokens, so a line through those points separates what every round
pays (the verify's fixed part, the host work, the read back) from what each draft adds (its row
of the verify, its drafting):
    steps per round = overhead + per_draft * drafts per round.
Host arithmetic on Python floats; no device.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.course.registry import resolve
from shared.reference.round_cost import Run, check_run      # given: a timed run and its one-line check


@dataclass(frozen=True)
class RoundCost:
    """A round of k drafts takes overhead + per_draft * k plain decode steps."""
    overhead: float
    per_draft: float

    def steps(self, k: float) -> float:
        return self.overhead + self.per_draft * k

    def speedup(self, alpha: float, k: int) -> float:
        """Predicted speedup over plain decoding: day 38's expected tokens per round (each draft
        accepted with probability alpha) over the round's time in plain steps."""
        return resolve("expected_tokens")(alpha, k) / self.steps(k)

    def tokens_needed(self, target: float, k: float) -> float:
        """Tokens per round a run of k drafts per round must yield to reach speedup `target`."""
        return target * self.steps(k)


# ---- the fit -------------------------------------------------------------------------------------------------
def steps_per_round(run: Run) -> float:
    """The run's time per round in plain decode steps: how many plain steps one round costs."""
    check_run(run)
    return run.seconds / run.step_seconds / run.rounds


def drafts_per_round(run: Run) -> float:
    check_run(run)
    return run.drafted / run.rounds


def fit_round_cost(runs) -> RoundCost:
    """The least-squares line steps per round = overhead + per_draft * drafts per round, one point
    per run (every run weighs the same, whatever its length). Needs two runs that drafted a
    different number of tokens per round: with one x there is no slope (K fixed: run another K).
    ValueError, in one line, for bad runs or a line that cannot be fitted."""
    runs = list(runs)
    if len(runs) < 2:
        raise ValueError(f"a line needs at least 2 timed runs, got {len(runs)}")
    xs = [drafts_per_round(r) for r in runs]
    ys = [steps_per_round(r) for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-12 * max(1.0, mx * mx):
        raise ValueError(f"every run drafted {mx:.3g} tokens per round: no slope to fit -- time runs with "
                         "different K, or a drafter whose rounds draft different numbers (n-gram)")
    per_draft = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return RoundCost(overhead=my - per_draft * mx, per_draft=per_draft)
