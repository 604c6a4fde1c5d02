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
    # TODO(day 34): one-line ValueError for k < 0, n < 1 or min_n not in 1..n. For m from
    #   min(n, len(tokens) - 1) down to min_n: suffix = the last m tokens; scan i from the latest
    #   start before the suffix's own (len - m - 1) down to 0; at the first i whose m tokens equal
    #   the suffix, return the (up to k) tokens after them. No m matched: [].
    raise NotImplementedError("Day 34: ngram_draft is not written yet -- edit days/day_34/ngram_draft.py "
                              "(lesson: notes/day_34_ngram_draft.md)")
