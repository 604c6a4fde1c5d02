"""Day 49 -- a continuous batching scheduler: who runs each step, and who waits.

Lesson: notes/day_49_scheduler.md        Check: pytest checkers/day_49

Static batching runs a batch until its longest member finishes. Continuous batching decides the
batch again at every step: a finished sequence leaves at once and a waiting request joins as
soon as a row and its KV blocks are free. When the pool runs out mid-decode, the most recently
admitted sequence is preempted (recompute: its blocks are freed, its tokens kept, and it is
prefilled again later). Host-side Python over day 48's batched runner (shared/engine/batch.py).
"""
from __future__ import annotations

import math
from collections import deque

import torch

from shared.engine.runner import check_ids
from shared.reference.scheduler import Request, StepOutput   # the request and output types are given


class Scheduler:
    """Continuous batching: add(request), step() -> [StepOutput], has_work, abort(request_id).

    runner: BatchRunner's interface -- prefill_many([(seq_id, ids), ...]) -> logits [n, V] (one
    forward for a step's new prompts), decode(seq_ids, tokens) -> [B, V], free(seq_id), num_free,
    blocks_to_prefill(T), blocks_to_decode(seq_ids), max_batch, cache.num_blocks, cache.max_len
    (the most tokens one sequence holds) and decoder.weights.config.vocab_size. The scheduler owns
    the runner's pool (all free at start).
    max_num_seqs: the most running sequences (rows of a decode), 1..runner.max_batch.
    max_num_batched_tokens: the most prompt tokens one step's prefills run (None: no cap); at
    least cache.max_len, so any request fits a step alone (no chunked prefill here).
    sample: (logits [V], temperature, top_k, top_p, generator) -> token, for requests with a
    temperature (ops.sample); a request with a seed draws from its own generator,
    torch.Generator(device=logits.device).manual_seed(seed). None: only greedy requests are accepted.
    waiting, running: the queues; num_preemptions: how many times a sequence was preempted.

    Order and the no-starvation bound. Requests are admitted from the head of the waiting queue
    only, and a preempted one goes back to the head, so the running sequences are always the
    oldest unfinished requests in arrival order (FCFS). The oldest is never preempted (alone it
    fits: add() refuses what could not), and when it waits nothing runs, so it is admitted: every
    step gives the oldest unfinished request a token. So a request added while requests with
    max_tokens N_1..N_k are unfinished gets its first token within 1 + N_1 + ... + N_k steps and
    finishes within N_1 + ... + N_k + its own max_tokens steps, whatever arrives after it.
    """

    def __init__(self, runner, *, max_num_seqs: int, max_num_batched_tokens: int | None = None, sample=None):
        # TODO(day 49): keep runner and sample; num_blocks, max_len from runner.cache, vocab_size from
        #   runner.decoder.weights.config. One-line ValueErrors: max_num_seqs not an int in 1..runner.max_batch;
        #   max_num_batched_tokens given but < max_len (a prompt runs in one step here); runner.num_free !=
        #   num_blocks (the scheduler owns the pool). Then max_num_seqs; max_num_batched_tokens (None: math.inf);
        #   waiting = a deque (arrival order), running = a list (admission order); num_preemptions = 0;
        #   _generators = {} (what _pick keeps per seeded request).
        raise NotImplementedError("Day 49: Scheduler.__init__ is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    @property
    def has_work(self) -> bool:
        # TODO(day 49): anything waiting or running.
        raise NotImplementedError("Day 49: Scheduler.has_work is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    def add(self, request: Request) -> None:
        """Queue a request at the back. Refused (ValueError, nothing queued) if it could never run."""
        # TODO(day 49): one-line ValueErrors, before anything is queued: not a Request; an id already waiting
        #   or running; a request that has run (output_ids or finish_reason set); an empty prompt; a token id
        #   outside the vocabulary (check_ids); prompt + max_new_tokens - 1 > max_len (the KV it holds before
        #   its last token: it could never fit, even alone); temperature > 0 without a sample function.
        #   Then append it to waiting.
        raise NotImplementedError("Day 49: Scheduler.add is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    def abort(self, request_id) -> bool:
        """Drop a queued or running request (a client went away); its blocks go back. False if unknown."""
        # TODO(day 49): waiting: remove it, finish_reason = 'abort'. Running: _finish(r, 'abort'). True if
        #   found, else False.
        raise NotImplementedError("Day 49: Scheduler.abort is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    def step(self) -> list[StepOutput]:
        """One scheduling step: the tokens it produced, at most one per request."""
        # TODO(day 49): preempted = _make_room(). If anything runs: ONE runner.decode of every running
        #   request (ids, and each one's last generated token), then _pick their tokens. Unless preempted:
        #   _admit() (each admission brings its first token, or its next after a preemption). Return
        #   [_record(r, token) for each (request, token) of this step].
        raise NotImplementedError("Day 49: Scheduler.step is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    # ---- the parts of a step ------------------------------------------------------------------
    def _make_room(self) -> bool:
        """Preempt the most recently admitted running sequences until one decode of the rest fits."""
        # TODO(day 49): while something runs and runner.blocks_to_decode(running ids) > runner.num_free:
        #   pop the LAST running request, runner.free it (recompute: the KV goes, its output_ids stay),
        #   put it back at the FRONT of waiting, count it in num_preemptions. Return whether any was.
        raise NotImplementedError("Day 49: Scheduler._make_room is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    def _admit(self) -> list[tuple[Request, int]]:
        """Admit waiting requests in order while a row, the token budget and the blocks allow, then
        prefill them together: one runner.prefill_many, one pick (one host read) for all."""
        # TODO(day 49): walk the waiting queue from the HEAD while fewer than max_num_seqs would run; a
        #   request's tokens are prompt + output_ids (r.token_ids). Stop at the first whose tokens exceed
        #   what is left of max_num_batched_tokens, or whose runner.blocks_to_prefill(len) exceeds the blocks
        #   left (runner.num_free minus what the requests before it in this step take): FCFS -- nobody
        #   overtakes the head. If nothing runs, nothing was admitted and something waits, the head can never
        #   fit: a one-line RuntimeError (free blocks, and that something else holds blocks) instead of
        #   stepping forever. Else prefill the admitted ones TOGETHER: runner.prefill_many([(r.id, tokens),
        #   ...]) -> logits [n, V] (one forward: a prefill costs its launches, not its tokens); move them
        #   from waiting to the end of running, in order; their tokens = _pick(group, logits). Return the
        #   (request, token) pairs.
        raise NotImplementedError("Day 49: Scheduler._admit is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    def _pick(self, rows: list[Request], logits: torch.Tensor) -> list[int]:
        """The next token of each row: greedy rows by one argmax (one host read), others sampled.
        Given: sampling is day 17's; today is about who runs."""
        tokens = logits.argmax(dim=-1).tolist()
        for i, r in enumerate(rows):
            p = r.params
            if p.temperature > 0:
                gen = self._generators.get(r.id)
                if gen is None and p.seed is not None:
                    gen = self._generators[r.id] = torch.Generator(device=logits.device).manual_seed(p.seed)
                tokens[i] = int(self.sample(logits[i], p.temperature, p.top_k, p.top_p, gen))
        return tokens

    def _record(self, r: Request, token: int) -> StepOutput:
        # TODO(day 49): append the token to r.output_ids. An EOS id (unless params.ignore_eos): _finish 'stop'
        #   -- the EOS is kept, nothing comes after it; else max_new_tokens reached: _finish 'length'.
        #   Return StepOutput(r.id, token, r.finish_reason).
        raise NotImplementedError("Day 49: Scheduler._record is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")

    def _finish(self, r: Request, reason: str) -> None:
        """A finished (or aborted) running request leaves the batch and gives its blocks back."""
        # TODO(day 49): remove it from running, runner.free its blocks (or the pool runs dry), drop its
        #   generator, set finish_reason.
        raise NotImplementedError("Day 49: Scheduler._finish is not written yet -- edit days/day_49/scheduler.py "
                                  "(lesson: notes/day_49_scheduler.md)")


def generate_all(runner, requests, *, max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                 sample=None) -> list[list[int]]:
    """Run every request through one Scheduler to the end: their new tokens, in the requests'
    order. max_num_seqs None: the runner's max_batch."""
    # TODO(day 49): a Scheduler (max_num_seqs or runner.max_batch), add every request, step while it has
    #   work, return each request's output_ids in order.
    raise NotImplementedError("Day 49: generate_all is not written yet -- edit days/day_49/scheduler.py "
                              "(lesson: notes/day_49_scheduler.md)")
