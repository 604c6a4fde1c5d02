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
    # TODO(day 45): logits [R, V] (any float dtype, any device), targets int64 [R]. Work in float64.
    #   log softmax(x)[t] = x[t] - logsumexp(x), and logsumexp(x) = m + log(sum(exp(x - m))) with m
    #   the row's max: write that yourself (not torch.log_softmax), then return the sum of
    #   logsumexp - x[target] over the rows as a Python float (one host read).
    raise NotImplementedError("Day 45: window_nll")


def perplexity(logits_fn, ids, *, window: int, stride: int) -> tuple[float, float, int]:
    """(perplexity, nll_sum in nats, n_tokens) of ids under logits_fn(list[int]) -> [len, vocab]."""
    # TODO(day 45): ids to a list of Python ints; check_windows(len(ids), window, stride) first.
    #   Windows start at begin = 0, stride, 2 * stride, ...; a window is ids[begin:end] with
    #   end = min(begin + window, n), and the loop stops after the window that reaches the end of
    #   the text (a last, shorter window is scored too).
    #   Row j of logits_fn(ids[begin:end]) predicts token begin + j + 1. The window scores the
    #   tokens from lo = max(prev_end, begin + 1) to end - 1: not the ones an earlier window scored
    #   (prev_end: where the previous window ended; 0 at first), and never the window's first token
    #   (no row predicts it). A window whose logits are not [end - begin, vocab]: ValueError.
    #   Sum window_nll over windows and count the scored tokens; return
    #   (exp(nll_sum / n_tokens), nll_sum, n_tokens) -- the mean over TOKENS, natural log throughout.
    raise NotImplementedError("Day 45: perplexity")


def greedy_agreement(reference, candidate) -> float:
    """The share of the reference's tokens the candidate reproduces before their first difference."""
    # TODO(day 45): an empty reference: ValueError. Count the leading positions where the two agree
    #   (stop at the first difference, or where the shorter one ends) and divide by len(reference).
    raise NotImplementedError("Day 45: greedy_agreement")
