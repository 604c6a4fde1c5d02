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
    # TODO(day 37): K = len(draft_tokens) (make them Python ints). One-line ValueError unless
    #   target_probs is [K+1, V], draft_probs is [K, V] and every draft id is in 0..V-1 -- all
    #   host values, no tensor read.
    # TODO(day 37): draw the K + 1 uniforms at once with the generator (on the generator's
    #   device, then moved to the probabilities'): u[i] decides draft i, u[K] draws the extra token.
    #   Host -> device copies (the uniforms, the draft ids) with non_blocking=True: a blocking
    #   copy synchronises with the GPU too.
    # TODO(day 37): gather p_i(x_i) and q_i(x_i) for all K drafts in one indexing op. Draft i is
    #   kept when u_i < p/q (the same as u_i < min(1, p/q), as u < 1); compare u_i * q < p so that
    #   nothing divides. n = the drafts before the FIRST rejection (a cumulative product of the
    #   keep flags, summed). Read n and "some q_i(x_i) is 0" to the host in ONE read; the latter is
    #   a draft that could not have been drawn: one-line ValueError.
    # TODO(day 37): the extra token's distribution: n == K -> the bonus row target_probs[K];
    #   else the residual max(0, p_n - q_n), or p_n itself when the residual is all zero (pick
    #   with torch.where: an `if` on a tensor is another host read). Draw it from u[K] by the
    #   inverse CDF (the first index whose cumulative sum, in fp64, passes u[K] * the total; or
    #   torch.multinomial on the generator's device) -- the second and last host read. Return the
    #   first n drafts + [the extra token].
    raise NotImplementedError("Day 37: spec_sample is not written yet -- edit days/day_37/spec_sample.py "
                              "(lesson: notes/day_37_spec_sampling.md)")
