"""Day 38 -- acceptance rate, expected tokens per step, and K chosen from the running acceptance.

Lesson: notes/day_38_acceptance.md        Check: pytest checkers/day_38

Day 35 drafts the same K every round. The best K depends on how often the drafts are right, and
that changes from prompt to prompt and within one answer (a passage copied from the prompt, then
new text). If each draft is accepted with probability alpha, a round of K drafts yields
1 + alpha + ... + alpha^K tokens and takes about 1 + cost * K rounds of none (cost: what one
draft adds -- drafting it and its row of the verify). This day counts acceptance the way that
formula means it (per draft the target judged), keeps a running estimate that forgets, and picks
the K with the most tokens per unit of time, never outside its bounds.

Host arithmetic on Python ints, once per round: day 35's loop reads the accepted count back to
the host anyway; nothing here touches the device or the captured decode step.
"""
from __future__ import annotations

import math


# ---- given: one-line checks ----------------------------------------------------------------------------------
def _check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the probability that a draft is accepted) must be in [0, 1], got {alpha!r}")


def _check_int(value, name: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def _check_bounds(k_min, k_max) -> None:
    _check_int(k_min, "k_min (the fewest drafts per round)", 1)
    _check_int(k_max, "k_max (the most drafts per round)", 1)
    if k_min > k_max:
        raise ValueError(f"k_min ({k_min}) must not exceed k_max ({k_max})")


def _check_cost(cost) -> None:
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0.0 <= cost < math.inf:
        raise ValueError(f"cost (what one draft adds to a round, in rounds without drafts) must be a finite "
                         f"number >= 0, got {cost!r}")


def _check_round(proposed, accepted) -> None:
    _check_int(proposed, "proposed (drafts in the round)", 0)
    _check_int(accepted, "accepted (drafts the target kept)", 0)
    if accepted > proposed:
        raise ValueError(f"a round cannot accept more drafts than it proposed: {accepted} of {proposed}")


# ---- the math ------------------------------------------------------------------------------------------------
def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one target step yields on average with k drafts, each accepted with probability
    alpha independently of the others: a round yields more than j tokens exactly when drafts
    1..j were all accepted (probability alpha^j, j = 0..k), so the mean is the sum of those,
    1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha): 1 at alpha = 0, k + 1 at
    alpha = 1. alpha outside [0, 1] or k < 0: ValueError."""
    _check_alpha(alpha)
    _check_int(k, "k (drafts per round)", 0)
    return sum(alpha ** j for j in range(k + 1))          # the sum: exact at alpha = 1, no 0 / 0


def choose_k(alpha: float, cost: float, k_min: int, k_max: int) -> int:
    """The K in k_min..k_max with the most expected tokens per unit of time, a round of K drafts
    taking 1 + cost * K (1 = a round with no draft). Ties go to the smaller K (cheaper, and less
    to roll back). Bad bounds (k_min < 1, k_min > k_max), alpha outside [0, 1] or a negative
    cost: ValueError."""
    _check_alpha(alpha)
    _check_cost(cost)
    _check_bounds(k_min, k_max)
    return max(range(k_min, k_max + 1), key=lambda k: expected_tokens(alpha, k) / (1 + cost * k))


# ---- counting ------------------------------------------------------------------------------------------------
class AcceptanceStats:
    """Counts per draft position i (0 = a round's first draft): proposed[i]; judged[i], how often
    the target compared it with its own pick (every draft before it was accepted); accepted[i].
    Acceptance at position i is accepted[i] / judged[i]. A draft after the first rejection was
    never judged: counting it as rejected (accepted / proposed) makes alpha look smaller the
    larger K is. rounds and tokens: rounds recorded and the tokens they yielded (the accepted
    drafts + the target's own pick after them, the bonus, which is not a draft)."""

    def __init__(self):
        self.proposed: list[int] = []
        self.judged: list[int] = []
        self.accepted: list[int] = []
        self.rounds = 0
        self.tokens = 0

    def record(self, proposed: int, accepted: int) -> None:
        """One round: `proposed` drafts, of which the first `accepted` were accepted.
        accepted > proposed or a negative count: ValueError, nothing recorded."""
        _check_round(proposed, accepted)
        grow = proposed - len(self.proposed)
        if grow > 0:
            for counts in (self.proposed, self.judged, self.accepted):
                counts.extend([0] * grow)
        for i in range(proposed):
            self.proposed[i] += 1
            self.judged[i] += i <= accepted                 # the first rejected draft was judged too
            self.accepted[i] += i < accepted
        self.rounds += 1
        self.tokens += accepted + 1                         # + the bonus: a token, not an accepted draft

    @property
    def alpha(self) -> float:
        """Accepted over judged drafts, all positions together (0.0 before any was judged)."""
        judged = sum(self.judged)
        return sum(self.accepted) / judged if judged else 0.0

    def by_position(self) -> list[float]:
        """accepted[i] / judged[i] for the positions judged at least once (a prefix: position i + 1
        is judged only after position i was accepted)."""
        return [a / j for a, j in zip(self.accepted, self.judged) if j]

    def tokens_per_step(self) -> float:
        return self.tokens / self.rounds if self.rounds else 0.0


# ---- the controller ------------------------------------------------------------------------------------------
class AdaptiveK:
    """K for the next round, chosen from the running acceptance: choose_k(alpha, cost, k_min,
    k_max) after every round, so K never leaves k_min..k_max. alpha starts at `alpha` and is an
    exponential moving average over the judged drafts (1 accepted, 0 rejected), in the order the
    target judged them; an observation's weight halves every `half_life` judged drafts after
    it, so the estimate forgets and K follows the text (copying, then writing). `stats` keeps
    the counts per draft position for the report. cost: what one draft adds to a round, in
    rounds without drafts (see choose_k)."""

    def __init__(self, k_min: int = 1, k_max: int = 8, *, cost: float = 0.1, half_life: float = 8.0,
                 alpha: float = 0.5):
        _check_bounds(k_min, k_max)
        _check_cost(cost)
        _check_alpha(alpha)
        if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not 0 < half_life < math.inf:
            raise ValueError(f"half_life (judged drafts after which an observation weighs half) must be a "
                             f"finite number > 0, got {half_life!r}")
        self.k_min, self.k_max, self.cost, self.half_life = k_min, k_max, cost, half_life
        self.keep = 0.5 ** (1.0 / half_life)       # what the estimate keeps of itself per judged draft
        self.alpha = float(alpha)
        self.stats = AcceptanceStats()
        self.k = choose_k(self.alpha, cost, k_min, k_max)

    def update(self, proposed: int, accepted: int) -> int:
        """One round's outcome (drafts proposed, how many from the first were accepted) -> the K
        for the next round. Bad counts: ValueError, nothing changed."""
        self.stats.record(proposed, accepted)
        for i in range(min(accepted + 1, proposed)):        # the drafts the target judged, in order
            self.alpha += (1.0 - self.keep) * ((1.0 if i < accepted else 0.0) - self.alpha)
        self.k = choose_k(self.alpha, self.cost, self.k_min, self.k_max)
        return self.k
