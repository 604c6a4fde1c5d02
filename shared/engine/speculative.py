"""Speculative decoding in the engine (day 35): a drafter guesses, the target verifies, the cache
rolls back what the target rejected.

The loop itself is the track's `speculative` (day 35, else shared/reference/speculative.py); this
file gives it its parts: the drafter by name (`ngram`: day 34's `ngram_draft`), day 33's Verifier
on the runner's cache (graphed like the decode step when the engine uses graphs), the greedy pick
the plain loop uses (the track's `sample` at temperature 0, so ties break the same way), and the
counters the footer reports. With greedy decoding the tokens are plain decoding's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

METHODS = ("ngram",)        # day 36 adds a draft model
DEFAULT_K = 4               # drafted tokens per target step
MAX_K = 16                  # one graph per K + 1 (and length bucket); day 11's skinny linear covers T <= 64


def check_options(method: str | None, k: int) -> None:
    """One line for a method or a K the engine cannot run, before any model loads."""
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown speculative method {method!r}: use one of {', '.join(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"spec_k (--spec-k, tokens drafted per target step) must be an integer in 1..{MAX_K}, got {k}")


@dataclass
class SpecStats:
    """What one speculative generation did: target forwards after the prefill (verifies), drafted
    tokens they scored, and how many of those the target accepted."""
    method: str = "ngram"
    k: int = DEFAULT_K
    steps: int = 0
    drafted: int = 0
    accepted: int = 0

    def tokens_per_step(self, new_tokens: int) -> float:
        """New tokens after the first (the prefill's) per verify: 1.0 is plain decoding."""
        return (new_tokens - 1) / self.steps if self.steps else 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def describe(self, new_tokens: int) -> str:
        return (f"speculative {self.method} K={self.k}: {self.tokens_per_step(new_tokens):.2f} tokens per target step, "
                f"{self.accepted}/{self.drafted} drafts accepted ({100 * self.acceptance:.0f}%)")


class Speculator:
    """One per runner and K: the Verifier's fixed buffers and graphs live as long as the runner."""

    def __init__(self, ops, runner, method: str, k: int, graphs_cls=None):
        check_options(method, k)
        self.ops, self.runner, self.method, self.k = ops, runner, method, k
        self.verifier = ops.Verifier(runner, max_k=k, graphs_cls=graphs_cls)
        self.draft = ops.ngram_draft

    def generate(self, prompt_ids: list[int], *, max_new_tokens: int, eos_token_ids: Iterable[int],
                 stats: SpecStats) -> Iterator[int]:
        ops = self.ops
        return ops.speculative(self.runner, prompt_ids, verify=self.verifier, draft=self.draft, k=self.k,
                               max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids,
                               greedy=lambda logits: ops.sample(logits, 0.0, 0, 1.0, None), stats=stats)
