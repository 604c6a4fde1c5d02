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
        # TODO(day 39): resolve("expected_tokens") is your day 38's (or the reference's): the tokens
        #   a round of k drafts yields on average, over what the round costs in plain steps.
        raise NotImplementedError("Day 39: RoundCost.speedup")

    def tokens_needed(self, target: float, k: float) -> float:
        """Tokens per round a run of k drafts per round must yield to reach speedup `target`."""
        # TODO(day 39): speedup = tokens / steps, solved for tokens.
        raise NotImplementedError("Day 39: RoundCost.tokens_needed")


def steps_per_round(run: Run) -> float:
    """The run's time per round in plain decode steps: how many plain steps one round costs."""
    # TODO(day 39): check_run(run) first (one line for a bad run). Then the run's seconds in units of
    #   its own plain step, shared by its rounds.
    raise NotImplementedError("Day 39: steps_per_round")


def drafts_per_round(run: Run) -> float:
    # TODO(day 39): check_run(run), then the drafts one round scored on average.
    raise NotImplementedError("Day 39: drafts_per_round")


def fit_round_cost(runs) -> RoundCost:
    """The least-squares line steps per round = overhead + per_draft * drafts per round, one point
    per run (every run weighs the same, whatever its length). Needs two runs that drafted a
    different number of tokens per round: with one x there is no slope (K fixed: run another K).
    ValueError, in one line, for bad runs or a line that cannot be fitted."""
    # TODO(day 39): fewer than 2 runs: ValueError. x = drafts_per_round, y = steps_per_round per run.
    #   Every x the same (within rounding): ValueError that says to vary K. Otherwise the line with
    #   an intercept: slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2), and the
    #   intercept puts the line through (mean x, mean y).
    raise NotImplementedError("Day 39: fit_round_cost")
