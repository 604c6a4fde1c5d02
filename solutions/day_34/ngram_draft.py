"""Day 34 -- drafter 1: n-gram prompt lookup. Propose what followed the last n tokens before.

Lesson: notes/day_34_ngram_draft.md        Check: pytest checkers/day_34

Summaries, extraction, question answering and code edits copy long runs of their input. When
the last few tokens of the context appeared earlier, the tokens that followed them then are a
good guess for what comes next -- and a cheap one: no model, no GPU, a search of the context.
The target model checks the guess with one verify pass (day 33); a wrong guess costs little.

Host-side Python: no kernel, no tensor. It runs once per target step, so it must cost far less than
one: the search runs in C (bytes.rfind over the tokens packed 4 bytes each), not position by
position in Python (lesson: "Making it fast").
"""
from __future__ import annotations

from array import array


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
    raw = array("i", tokens).tobytes()                    # 4 bytes a token: bytes.rfind searches in C
    for m in range(min(n, L - 1), min_n - 1, -1):        # the longest suffix first, then shorter ones
        suffix = raw[4 * (L - m):]
        end = 4 * (L - 1)                                 # an occurrence ends before the last token: i + m <= L - 1
        while (j := raw.rfind(suffix, 0, end)) >= 0:      # the latest occurrence first
            if j % 4 == 0:                                # it starts on a token, not inside one
                i = j // 4
                return tokens[i + m:i + m + k]
            end = j + 4 * m - 1                           # straddles tokens: look further left
    return []
