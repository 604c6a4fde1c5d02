"""Day 36 -- drafter 2: a draft model with its own KV cache.

Lesson: notes/day_36_model_draft.md        Check: pytest checkers/day_36

Day 34's n-gram lookup drafts for free, but only where the answer copies the context. A draft
*model* guesses everywhere: a smaller network that agrees with the target often enough. Here it
is the target's own first L layers + its final norm and lm_head (a self-draft: no new weights,
no copy), or any smaller Llama with the same tokenizer. Its K greedy tokens go to day 35's loop
as drafts; the loop's output is still plain greedy decoding's, whatever the draft says.

A draft model is a model: it has its own KV cache, and that cache must follow the target's
decisions. Each call sees the context the loop has kept so far; the draft's cache holds what
the draft fed last time (the context then + its own drafts). The longest prefix the two share is
still right; everything after it -- the drafts the target rejected -- is rolled back, the tokens
the target accepted since are fed (the catch-up), and K decode steps draft. The loop needs no
hook: the context itself says what was accepted.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from shared.engine.runner import check_ids


def self_draft(weights, num_layers: int):
    """The target's first num_layers layers + its final norm and lm_head, as a ModelWeights.

    Every tensor is the target's own (the same objects: no copy, no new memory); only the
    config's num_layers changes, so a cache built from it has num_layers layers. num_layers
    outside 1..len(weights.layers) (or not an int): ValueError.
    """
    n = len(weights.layers)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= n:
        raise ValueError(f"a self-draft keeps 1..{n} of the target's {n} layers, got {num_layers!r}")
    return replace(weights, config=replace(weights.config, num_layers=num_layers),
                   layers=weights.layers[:num_layers])          # a new list of the same layer objects


class ModelDraft:
    """draft(context, k) -> the draft model's k greedy tokens after context (day 35's `draft`).

    runner: a ModelRunner of the draft model on its own cache (a StaticCache: rollback(length)).
    `tokens` is what that cache holds, position by position. A call keeps the longest prefix of
    `tokens` that context still agrees with (at most all of context but its newest token), rolls
    the cache back to it, feeds the rest of context but the newest token in one forward (the
    catch-up), then runs k decode steps chained on the device: the newest token first, then each
    step's argmax as the next step's input. The k tokens are read back once. Afterwards the cache
    holds context + the first k - 1 drafts (the last draft is never fed). k == 0: [] and the cache
    is untouched. k outside 0..max_k or an empty context: ValueError.
    """

    def __init__(self, runner, *, max_k: int = 16):
        if not hasattr(runner.backend, "rollback"):
            raise ValueError(f"a draft model needs its own KV cache (a StaticCache), not {type(runner.backend).__name__}")
        if max_k < 0:
            raise ValueError(f"max_k (the most tokens one call drafts) must be >= 0, got {max_k}")
        self.runner, self.max_k = runner, max_k
        self.tokens: list[int] = []            # what the draft's cache holds, position by position
        self.out = torch.zeros(max(max_k, 1), dtype=torch.int32, device=runner.device)   # the drafts, on the device

    def __call__(self, context: list[int], k: int) -> list[int]:
        context = list(context)
        if not 0 <= k <= self.max_k:
            raise ValueError(f"k (tokens to draft) must be in 0..{self.max_k} (max_k), got {k}")
        if not context:
            raise ValueError("the draft needs a context of at least one token")
        if k == 0:
            return []
        r = self.runner
        keep = 0                               # the cached prefix that context still agrees with
        while keep < min(len(self.tokens), len(context) - 1) and self.tokens[keep] == context[keep]:
            keep += 1
        check_ids(context[keep:], r.weights.config.vocab_size)  # one line before any launch
        r.backend.rollback(keep)               # forget the rejected drafts (and anything after them)
        self.tokens = context[:keep]
        r.cached = keep
        if keep < len(context) - 1:            # catch up: what the target accepted since the last call
            r.forward(context[keep:-1], keep)
        r.ids_buf.fill_(context[-1])           # the newest token: the first decode step's input
        for i in range(k):
            r.decode_on_device(len(context) - 1 + i)     # greedy step: its argmax lands in next_buf
            self.out[i:i + 1].copy_(r.next_buf)
            r.ids_buf.copy_(r.next_buf)                  # ... and is the next step's input, on the device
        drafts = self.out[:k].tolist()         # the one read back per call
        self.tokens = context + drafts[:-1]    # the last draft was never fed
        r.cached = len(self.tokens)
        return drafts


def model_draft(runner, context: list[int], k: int) -> list[int]:
    """k greedy tokens of the draft model after context, from an empty cache: ModelDraft, once."""
    return ModelDraft(runner, max_k=max(k, 0))(context, k)
