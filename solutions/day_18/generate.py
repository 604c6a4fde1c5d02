"""Day 18 -- the decode loop: logits for the sequence so far, pick a token, stop on EOS or a budget.

Lesson: notes/day_18_generate.md        Check: pytest checkers/day_18

Host code: the loop does not care how next_logits gets its answer (recompute the whole prefix
today, a KV cache from day 19 on) nor how `sample` picks (day 17's kernels).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch


def generate(next_logits: Callable[[list[int]], torch.Tensor], prompt_ids: list[int], *,
             max_new_tokens: int, eos_token_ids: Iterable[int] = (),
             sample: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[int]:
    """Yield new token ids until an EOS id (yielded too, as HF does) or max_new_tokens.

    next_logits(ids) returns the logits [vocab] for the token after `ids`; whether it recomputes
    the whole prefix or uses a KV cache is its business -- the loop is the same.
    A generator: each token is yielded as soon as it is picked (streaming), and nothing is
    computed before the caller asks for the first token.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    ids = list(prompt_ids)                 # a copy: never grow the caller's list
    eos = set(eos_token_ids)               # read once: the argument may be a one-shot iterator
    for _ in range(max_new_tokens):
        tok = int(sample(next_logits(ids)))
        yield tok
        if tok in eos:
            return
        ids.append(tok)
