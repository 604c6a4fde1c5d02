"""Reference for day 39: a speculative round's cost in plain decode steps, fitted over timed runs
(`fit_round_cost`, here with numpy's least squares). Same names and signatures as the day; `Run`
and `check_run` are given to the day as they are."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.reference.acceptance import expected_tokens


@dataclass(frozen=True)
class Run:
    """One speculative generation, timed: `seconds` of decoding (after the prefill's first token)
    in `rounds` target steps that scored `drafted` drafts, beside `step_seconds`, one plain decode
    step of the same prompt in the same run."""
    rounds: int
    drafted: int
    seconds: float
    step_seconds: float


def check_run(run) -> None:
    """One line for a run that cannot be a timed speculative generation."""
    if not isinstance(run, Run):
        raise ValueError(f"a timed run is a Run(rounds, drafted, seconds, step_seconds), got {run!r}")
    if isinstance(run.rounds, bool) or not isinstance(run.rounds, int) or run.rounds < 1:
        raise ValueError(f"a run has at least one round (target step), got rounds={run.rounds!r}")
    if isinstance(run.drafted, bool) or not isinstance(run.drafted, int) or run.drafted < 0:
        raise ValueError(f"drafted (drafts the run's rounds scored) must be an integer >= 0, got {run.drafted!r}")
    for name in ("seconds", "step_seconds"):
        v = getattr(run, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < math.inf:
            raise ValueError(f"{name} must be a time > 0 (measured, finite), got {v!r}")


@dataclass(frozen=True)
class RoundCost:
    """A round of k drafts takes overhead + per_draft * k plain decode steps."""
    overhead: float
    per_draft: float

    def steps(self, k: float) -> float:
        return self.overhead + self.per_draft * k

    def speedup(self, alpha: float, k: int) -> float:
        return expected_tokens(alpha, k) / self.steps(k)

    def tokens_needed(self, target: float, k: float) -> float:
        return target * self.steps(k)


def steps_per_round(run: Run) -> float:
    check_run(run)
    return run.seconds / (run.step_seconds * run.rounds)


def drafts_per_round(run: Run) -> float:
    check_run(run)
    return run.drafted / run.rounds


def fit_round_cost(runs) -> RoundCost:
    runs = list(runs)
    if len(runs) < 2:
        raise ValueError(f"a line needs at least 2 timed runs, got {len(runs)}")
    x = np.array([drafts_per_round(r) for r in runs])
    y = np.array([steps_per_round(r) for r in runs])
    if np.ptp(x) <= 1e-6 * max(1.0, abs(x.mean())):
        raise ValueError(f"every run drafted {x.mean():.3g} tokens per round: no slope to fit -- time runs with "
                         "different K, or a drafter whose rounds draft different numbers (n-gram)")
    (overhead, per_draft), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), y, rcond=None)
    return RoundCost(float(overhead), float(per_draft))
