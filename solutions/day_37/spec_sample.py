"""Day 37 -- speculative sampling: keep a draft with probability min(1, p/q), else resample.

Lesson: notes/day_37_spec_sampling.md        Check: pytest checkers/day_37

Greedy speculative decoding (day 35) keeps a draft when it equals the target's argmax. With
sampling there is no single right token, only a distribution p the target would draw from. The
rejection rule of Leviathan et al. (2023) and Chen et al. (2023) keeps draft x ~ q with
probability min(1, p(x) / q(x)) and, on a rejection, draws the replacement from the leftover
mass max(0, p - q), normalised: every token then comes out with probability exactly p, however
good or bad the draft is. A good draft only makes acceptance more likely.

Host-side control logic on K + 1 rows, in torch on the probabilities' device: a few tiny ops and
two host reads per call (how many drafts survived, the extra token) -- never one per token. The
caller needs both on the host anyway, to roll the cache back and to feed the next verify.
"""
from __future__ import annotations

import torch


def spec_sample(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft_tokens: list[int],
                generator: torch.Generator | None = None) -> list[int]:
    """The accepted drafts and one more token: 1..K+1 ids whose law is the target's own.

    target_probs [K+1, V]: the target's distributions at the K+1 verify rows (row i scores
    draft i; row K follows the last draft). draft_probs [K, V]: the distributions the drafts
    were drawn from (a deterministic drafter's row is one-hot at its token). Draft i is kept
    with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the extra token comes
    from max(0, p_i - q_i) normalised (p_i itself when that is all zero) and the rest is
    dropped; after K acceptances it is a bonus token from p_K. A draft with q_i(x_i) = 0 could
    not have been drawn: ValueError. Two host reads per call (how many were accepted, the extra
    token), none per token.
    """
    draft_tokens = [int(t) for t in draft_tokens]
    K = len(draft_tokens)
    if target_probs.dim() != 2 or target_probs.shape[0] != K + 1:
        raise ValueError(f"target_probs must be [K+1, V] = [{K + 1}, V] for {K} drafts, "
                         f"got {tuple(target_probs.shape)}")
    V = target_probs.shape[1]
    if tuple(draft_probs.shape) != (K, V):
        raise ValueError(f"draft_probs must be [K, V] = [{K}, {V}] (one row per draft), got {tuple(draft_probs.shape)}")
    if any(not 0 <= t < V for t in draft_tokens):
        raise ValueError(f"draft tokens must be ids in 0..{V - 1}, got {draft_tokens}")
    dev = target_probs.device
    # one uniform per decision: u[i] accepts or rejects draft i, u[K] draws the extra token
    u = torch.rand(K + 1, generator=generator,
                   device=generator.device if generator is not None else dev).to(dev, non_blocking=True)
    rows, x = torch.arange(K, device=dev), torch.tensor(draft_tokens, dtype=torch.long).to(dev, non_blocking=True)
    p_x, q_x = target_probs[rows, x], draft_probs[rows, x]
    # keep draft i when u_i < p/q -- the same as u_i < min(1, p/q) since u < 1 -- without a division;
    # the cumulative product counts the drafts before the first rejection
    accepted = (u[:K] * q_x < p_x).int().cumprod(0).sum()
    n, bad = torch.stack([accepted, (q_x <= 0).any().int()]).tolist()          # host read 1
    if bad:
        raise ValueError("a draft token has probability 0 under its draft_probs row: pass the distribution "
                         "each draft was drawn from (one-hot at the token for a deterministic drafter)")
    if n == K:
        dist = target_probs[K]              # every draft kept: the bonus token, from the row after the last draft
    else:
        residual = (target_probs[n] - draft_probs[n]).clamp(min=0)
        dist = torch.where(residual.sum() > 0, residual, target_probs[n])       # p == q leaves no residual: p
    # inverse CDF: the first token whose cumulative mass passes u * total (normalising is implicit)
    cdf = dist.double().cumsum(0)
    extra = int((cdf <= u[K].double() * cdf[-1]).sum())                          # host read 2
    return draft_tokens[:n] + [extra]
