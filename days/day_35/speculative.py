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
    # TODO(day 35): a one-line ValueError for k < 0; nothing to yield when max_new_tokens < 1.
    #   pick = greedy, or torch.argmax over the last dim. runner.reset(), then the prefill:
    #   runner.next_logits(prompt) gives the first token (pick it from logits[None]). Yield it.
    #   Keep `context` = prompt + every token yielded. Stop after an EOS id or max_new_tokens.
    # TODO(day 35): one round, while neither stop has happened:
    #   1. start = len(context) - 1: the cache holds every token but the newest.
    #   2. room = min(k, tokens still allowed - 1): never draft a token that could not be emitted.
    #      drafts = draft(context, room), at most room of them.
    #   3. logits = verify([newest] + drafts, start); picks = pick(logits) as a Python list (the one
    #      read back per round). Row i is the target's token after tokens[i].
    #   4. a = how many drafts, from the first, equal the pick of the row before them; the new
    #      tokens are the a accepted drafts + the pick of row a (it exists even when a == len(drafts)).
    #      Cut them right after an EOS id.
    #   5. runner.backend.rollback(...) and runner.cached to what the cache must hold now: the newest
    #      token and every new token but the last (plain decoding never caches its newest token).
    #   6. stats (when given): steps + 1, drafted + len(drafts), accepted + a. Yield the new tokens.
    raise NotImplementedError("Day 35: speculative is not written yet -- edit days/day_35/speculative.py "
                              "(lesson: notes/day_35_speculative.md)")
