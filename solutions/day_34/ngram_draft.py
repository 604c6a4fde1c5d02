"""Day 34 -- drafter 1: n-gram prompt lookup. Propose what followed the last n tokens before.

Lesson: notes/day_34_ngram_draft.md        Check: pytest checkers/day_34

Summaries, extraction, question answering and code edits copy long runs of their input. When
the last few tokens of the context appeared earlier, the tokens that followed them then are a
good guess for what comes next -- and a free one: no model, no GPU, a search in a Python list.
The target model checks the guess with one verify pass (day 33); a wrong guess costs little.

Host-side Python: no kernel, no tensor.
"""
from __future__ import annotations


def ngram_draft(tokens: list[int], k: int, n: int = 3, min_n: int = 1) -> list[int]:
    """Up to k draft tokens: what followed the latest earlier occurrence of the context's last m
    tokens, for the longest m from n down to min_n that has one; [] when none has (or k == 0).

    An earlier occurrence starts before the suffix itself does (it may overlap it); the suffix
    matched with itself is not one -- nothing follows it. The proposal is the tokens right after
    the occurrence, as many as exist up to k: never padded. k < 0, n < 1, or min_n outside
    1..n: ValueError.
    """
    if k < 0:
        raise ValueError(f"k (how many tokens to draft) must be >= 0, got {k}")
    if n < 1 or not 1 <= min_n <= n:
        raise ValueError(f"the n-gram lengths need 1 <= min_n <= n, got n={n}, min_n={min_n}")
    tokens = list(tokens)
    L = len(tokens)
    for m in range(min(n, L - 1), min_n - 1, -1):        # the longest suffix first, then shorter ones
        suffix = tokens[L - m:]
        for i in range(L - m - 1, -1, -1):                 # the latest occurrence first; L - m is the suffix
            if tokens[i:i + m] == suffix:
                return tokens[i + m:i + m + k]
    return []
