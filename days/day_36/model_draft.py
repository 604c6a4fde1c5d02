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
    # TODO(day 36): a one-line ValueError unless num_layers is an int (not a bool) in
    #   1..len(weights.layers). Then dataclasses.replace: the same weights with config.num_layers
    #   set to num_layers (replace works on the frozen config too) and layers = the first
    #   num_layers layer objects. Copy nothing: embed, final_norm, lm_head, inv_freq and every
    #   layer stay the target's own tensors.
    raise NotImplementedError("Day 36: self_draft is not written yet -- edit days/day_36/model_draft.py "
                              "(lesson: notes/day_36_model_draft.md)")


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
        # TODO(day 36): one-line ValueErrors for k outside 0..self.max_k and an empty context;
        #   k == 0 returns [] and touches nothing.
        # TODO(day 36): the rollback. keep = how many leading tokens self.tokens and context share,
        #   at most len(context) - 1 (the newest token is always fed: its logits give draft 1).
        #   check_ids on context[keep:] (the tokens about to be fed), then
        #   runner.backend.rollback(keep); self.tokens and runner.cached follow.
        # TODO(day 36): the catch-up. The tokens after keep, but the newest, in one eager forward at
        #   position keep: runner.forward(ids, start) (only when there are any).
        # TODO(day 36): k greedy steps without a host read in between. Put the newest token into
        #   runner.ids_buf (fill_); step i feeds position len(context) - 1 + i with
        #   runner.decode_on_device(position): its argmax lands in runner.next_buf. Copy it into
        #   self.out[i] and into runner.ids_buf (copy_, on the device: the next step's input).
        # TODO(day 36): read self.out[:k] back once (.tolist()). The cache now holds context + all
        #   drafts but the last (never fed): set self.tokens and runner.cached to say so. Return them.
        raise NotImplementedError("Day 36: ModelDraft is not written yet -- edit days/day_36/model_draft.py "
                                  "(lesson: notes/day_36_model_draft.md)")


def model_draft(runner, context: list[int], k: int) -> list[int]:
    """k greedy tokens of the draft model after context, from an empty cache: ModelDraft, once."""
    # TODO(day 36): a fresh ModelDraft on runner (max_k = k, at least 0), called once.
    raise NotImplementedError("Day 36: model_draft is not written yet -- edit days/day_36/model_draft.py "
                              "(lesson: notes/day_36_model_draft.md)")
