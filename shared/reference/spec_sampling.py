"""Reference for day 37: speculative sampling (Leviathan et al. 2023; Chen et al. 2023), the
rejection rule whose output has exactly the target's distribution, and `sample_probs`, the
distribution `sample` draws from (the probabilities spec_sample takes). Same names and
signatures as the day; the learner's day replaces spec_sample through the registry once finished."""
from __future__ import annotations

import torch


def sample_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> torch.Tensor:
    """fp32 probabilities [..., V] that `sample(logits, temperature, top_k, top_p)` draws from:
    softmax(logits / temperature) after the same top-k and top-p masks; temperature 0 is greedy,
    a one-hot row at the argmax. Speculative sampling takes these, for target and draft alike."""
    x = logits.float()
    if temperature <= 0:
        return torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    x = x / temperature
    if top_k and top_k < x.shape[-1]:
        x = x.masked_fill(x < torch.topk(x, top_k, dim=-1).values[..., -1:], float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        sorted_x = sorted_x.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, order, sorted_x)
    return torch.softmax(x, dim=-1)


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
    u = torch.rand(K + 1, generator=generator,
                   device=generator.device if generator is not None else dev).to(dev, non_blocking=True)
    rows, x = torch.arange(K, device=dev), torch.tensor(draft_tokens, dtype=torch.long).to(dev, non_blocking=True)
    p_x, q_x = target_probs[rows, x], draft_probs[rows, x]
    accepted = (u[:K] * q_x < p_x).int().cumprod(0).sum()
    n, bad = torch.stack([accepted, (q_x <= 0).any().int()]).tolist()
    if bad:
        raise ValueError("a draft token has probability 0 under its draft_probs row: pass the distribution "
                         "each draft was drawn from (one-hot at the token for a deterministic drafter)")
    if n == K:
        dist = target_probs[K]
    else:
        residual = (target_probs[n] - draft_probs[n]).clamp(min=0)
        dist = torch.where(residual.sum() > 0, residual, target_probs[n])
    cdf = dist.double().cumsum(0)
    extra = int((cdf <= u[K].double() * cdf[-1]).sum())
    return draft_tokens[:n] + [extra]
