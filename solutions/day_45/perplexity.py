"""Day 45 -- perplexity over a long text, in strided windows; greedy agreement between two runs.

Lesson: notes/day_45_perplexity.md        Check: pytest checkers/day_45

Perplexity is exp of the mean negative log-likelihood the model gives each token of a text,
knowing the tokens before it. A text longer than the model's window is scored in windows of
`window` tokens that start every `stride` tokens (the HF strided recipe): each window's tokens
not scored by an earlier window are scored there, with the rest of the window as context, so
every token but the first is scored exactly once, with at least window - stride tokens before it
(or all of them, near the start). `tinyinfer perplexity` runs it for every quantized mode.
Host Python over the logits the engine returns; one host read per window.
"""
from __future__ import annotations

import math

import torch

from shared.reference.perplexity import check_windows     # given: the one-line checks


def window_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum over rows of -log softmax(row)[target], in nats, computed in float64 with the row's
    max subtracted before exp (fp16 logits of 12 already overflow exp in fp16)."""
    x = logits.double()
    m = x.max(dim=-1, keepdim=True).values
    lse = m.squeeze(-1) + torch.log(torch.exp(x - m).sum(dim=-1))
    return float((lse - x.gather(-1, targets.view(-1, 1)).squeeze(-1)).sum())


def perplexity(logits_fn, ids, *, window: int, stride: int) -> tuple[float, float, int]:
    """(perplexity, nll_sum in nats, n_tokens) of ids under logits_fn(list[int]) -> [len, vocab]."""
    ids = [int(i) for i in ids]
    n = len(ids)
    check_windows(n, window, stride)
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        lo = max(prev_end, begin + 1)
        logits = logits_fn(ids[begin:end])
        if logits.dim() != 2 or logits.shape[0] != end - begin:
            raise ValueError(f"logits_fn must return [{end - begin}, vocab] logits for {end - begin} ids, "
                             f"got {list(logits.shape)}")
        rows = logits[lo - begin - 1:end - begin - 1]
        targets = torch.tensor(ids[lo:end], dtype=torch.long, device=logits.device)
        nll += window_nll(rows, targets)
        count += end - lo
        prev_end = end
        if end == n:
            break
    return math.exp(nll / count), nll, count


def greedy_agreement(reference, candidate) -> float:
    """The share of the reference's tokens the candidate reproduces before their first difference."""
    reference, candidate = list(reference), list(candidate)
    if not reference:
        raise ValueError("greedy_agreement needs at least one reference token")
    same = next((i for i, (a, b) in enumerate(zip(reference, candidate)) if a != b),
                min(len(reference), len(candidate)))
    return same / len(reference)
