"""Reference for day 45: perplexity over a long text in strided windows, and greedy agreement.
Same names and signatures as the day (the contract is in days/day_45/perplexity.py)."""
from __future__ import annotations

import math

import torch


def check_windows(n: int, window, stride) -> None:
    """One line for a text or a window the recipe cannot score."""
    for name, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens (one of context, one scored), got {window}")
    if not 1 <= stride < window:
        raise ValueError(f"stride must be 1..window - 1 = {window - 1} (each window's first token is context "
                         f"only), got {stride}")
    if n < 2:
        raise ValueError(f"a text of {n} token(s) has nothing to score: the first token has no prediction")


def window_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum of -log p(target) over rows, in nats: log-softmax in float64, max subtracted first."""
    x = logits.double()
    m = x.max(dim=-1, keepdim=True).values
    lse = m.squeeze(-1) + torch.log(torch.exp(x - m).sum(dim=-1))
    return float((lse - x.gather(-1, targets.view(-1, 1)).squeeze(-1)).sum())


def perplexity(logits_fn, ids, *, window: int, stride: int) -> tuple[float, float, int]:
    ids = [int(i) for i in ids]
    n = len(ids)
    check_windows(n, window, stride)
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        lo = max(prev_end, begin + 1)                 # tokens an earlier window scored are context now
        logits = logits_fn(ids[begin:end])
        if logits.dim() != 2 or logits.shape[0] != end - begin:
            raise ValueError(f"logits_fn must return [{end - begin}, vocab] logits for {end - begin} ids, "
                             f"got {list(logits.shape)}")
        rows = logits[lo - begin - 1:end - begin - 1]    # row j predicts token begin + j + 1
        targets = torch.tensor(ids[lo:end], dtype=torch.long, device=logits.device)
        nll += window_nll(rows, targets)
        count += end - lo
        prev_end = end
        if end == n:
            break
    return math.exp(nll / count), nll, count


def greedy_agreement(reference, candidate) -> float:
    """The share of `reference`'s tokens that `candidate` reproduces before it first differs."""
    reference, candidate = list(reference), list(candidate)
    if not reference:
        raise ValueError("greedy_agreement needs at least one reference token")
    same = next((i for i, (a, b) in enumerate(zip(reference, candidate)) if a != b),
                min(len(reference), len(candidate)))
    return same / len(reference)
