"""Day 35 -- greedy speculative decoding: draft, verify, accept, roll back, repeat.

Lesson: notes/day_35_speculative.md        Check: pytest checkers/day_35

A decode step reads every weight to produce one token. Day 33's verify pass reads them once for
K + 1 tokens; day 34's drafter guesses K tokens for free. Put together: guess K tokens, score the
newest token and the K guesses in one forward, keep the guesses the target agrees with (its own
argmax, row by row) plus the one token the target says comes next, and forget the rest -- in the
cache too (rollback). Every token is still the target's greedy choice, so the output is plain
greedy decoding's, token for token; only the number of target forwards changes.

The loop runs on the host: it reads the K + 1 picks back once per round (that read decides what
to keep). Everything inside a round -- the verify forward -- is day 33's capture-safe step.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch


def speculative(runner, prompt_ids: list[int], *, verify: Callable[[list[int], int], torch.Tensor],
                draft: Callable[[list[int], int], list[int]], k: int, max_new_tokens: int,
                eos_token_ids: Iterable[int] = (), greedy: Callable[[torch.Tensor], torch.Tensor] | None = None,
                stats=None) -> Iterator[int]:
    """Yield plain greedy decoding's tokens for prompt_ids (EOS included, as generate does), up to
    k + 1 per target forward.

    runner: a ModelRunner on a static or paged cache (its backend has rollback(length)); the loop
    resets it and prefills the prompt. verify(tokens, start): fp32 logits [len(tokens), vocab] for
    tokens at positions start.. on top of the cache (day 33's Verifier, max_k >= k). draft(context,
    n): up to n guesses of what follows context (day 34's ngram_draft). greedy(logits [T, V]) ->
    int64 [T]: the target's pick per row (default torch.argmax; the engine passes its sampler at
    temperature 0 so ties break as in plain decoding). Never emits past an EOS id or
    max_new_tokens, even inside a run of accepted drafts. stats (optional): an object whose
    counters steps, drafted and accepted grow by 1, len(drafts) and the accepted count per verify.
    k < 0: ValueError.
    """
    if k < 0:
        raise ValueError(f"k (tokens drafted per target step) must be >= 0, got {k}")
    pick = greedy or (lambda logits: torch.argmax(logits, dim=-1))
    eos = set(eos_token_ids)
    if max_new_tokens < 1:
        return
    runner.reset()
    context = list(prompt_ids)
    new = [int(pick(runner.next_logits(context)[None])[0])]     # the prefill: the cache holds the prompt
    while True:
        yield from new
        context += new
        done = len(context) - len(prompt_ids)
        if new[-1] in eos or done >= max_new_tokens:
            return
        start = len(context) - 1                                  # the cache holds all but the newest token
        room = min(k, max_new_tokens - done - 1)                  # never draft a token that cannot be emitted
        drafts = list(draft(context, room))[:room]
        target = pick(verify([context[-1]] + drafts, start)).tolist()   # the one read per round
        a = 0                                                     # the longest prefix the target agrees with
        while a < len(drafts) and drafts[a] == target[a]:
            a += 1
        new = drafts[:a] + [target[a]]                            # + the target's own next token (the bonus)
        new = new[:next((i + 1 for i, t in enumerate(new) if t in eos), len(new))]   # cut after an EOS
        runner.backend.rollback(start + len(new))                 # keep the newest token + the kept drafts
        runner.cached = start + len(new)
        if stats is not None:
            stats.steps += 1
            stats.drafted += len(drafts)
            stats.accepted += a
