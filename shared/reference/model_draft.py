"""Reference for day 36: a draft model with its own KV cache (`ModelDraft`, `model_draft`) and the
self-draft (`self_draft`: the target's first layers, final norm and head). Same names and
signatures as the day; the learner's day replaces them through the registry once finished."""
from __future__ import annotations

from dataclasses import replace

import torch

from shared.engine.runner import check_ids


def self_draft(weights, num_layers: int):
    """The target's first num_layers layers + its final norm and lm_head, as a ModelWeights that
    shares every tensor with the target (no copy); config.num_layers says how deep it is."""
    n = len(weights.layers)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= n:
        raise ValueError(f"a self-draft keeps 1..{n} of the target's {n} layers, got {num_layers!r}")
    return replace(weights, config=replace(weights.config, num_layers=num_layers), layers=weights.layers[:num_layers])


class ModelDraft:
    """draft(context, k) -> the draft model's k greedy tokens after context. The draft's runner
    (its own cache: a StaticCache sized for its layers) keeps what it computed: each call rolls
    the cache back to the longest prefix it shares with context (the drafts the target rejected
    go), feeds the tokens the target accepted since, then runs k decode steps chained on the
    device (each argmax is the next step's input) and reads the k tokens back once."""

    def __init__(self, runner, *, max_k: int = 16):
        if not hasattr(runner.backend, "rollback"):
            raise ValueError(f"a draft model needs its own KV cache (a StaticCache), not {type(runner.backend).__name__}")
        if max_k < 0:
            raise ValueError(f"max_k (the most tokens one call drafts) must be >= 0, got {max_k}")
        self.runner, self.max_k = runner, max_k
        self.tokens: list[int] = []            # what the draft's cache holds, position by position
        self.out = torch.zeros(max(max_k, 1), dtype=torch.int32, device=runner.device)

    def __call__(self, context: list[int], k: int) -> list[int]:
        context = list(context)
        if not 0 <= k <= self.max_k:
            raise ValueError(f"k (tokens to draft) must be in 0..{self.max_k} (max_k), got {k}")
        if not context:
            raise ValueError("the draft needs a context of at least one token")
        if k == 0:
            return []
        r = self.runner
        keep = 0                               # the cached prefix context still agrees with
        while keep < min(len(self.tokens), len(context) - 1) and self.tokens[keep] == context[keep]:
            keep += 1
        check_ids(context[keep:], r.weights.config.vocab_size)
        r.backend.rollback(keep)
        self.tokens = context[:keep]
        r.cached = keep
        if keep < len(context) - 1:            # catch up on what the target accepted since
            r.forward(context[keep:-1], keep)
        r.ids_buf.fill_(context[-1])
        for i in range(k):                     # k greedy steps, fed on the device
            r.decode_on_device(len(context) - 1 + i)
            self.out[i:i + 1].copy_(r.next_buf)
            r.ids_buf.copy_(r.next_buf)
        drafts = self.out[:k].tolist()         # the one read per call
        self.tokens = context + drafts[:-1]    # the last draft was never fed
        r.cached = len(self.tokens)
        return drafts


def model_draft(runner, context: list[int], k: int) -> list[int]:
    """k greedy tokens of the draft model after context, from an empty cache (see ModelDraft)."""
    return ModelDraft(runner, max_k=max(k, 0))(context, k)
