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
        self.runner, self.sample = runner, sample
        self.num_blocks, self.max_len = runner.cache.num_blocks, runner.cache.max_len
        self.vocab_size = runner.decoder.weights.config.vocab_size
        if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or \
                not 1 <= max_num_seqs <= runner.max_batch:
            raise ValueError(f"max_num_seqs must be in 1..{runner.max_batch} (the runner's max_batch), got {max_num_seqs}")
        if max_num_batched_tokens is not None and max_num_batched_tokens < self.max_len:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= {self.max_len}, the longest "
                             "sequence, so any request's prefill fits one step (or None: no cap)")
        if runner.num_free != self.num_blocks:
            raise ValueError(f"the scheduler owns the runner's pool, but {self.num_blocks - runner.num_free} blocks "
                             "are held: free those sequences first")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = math.inf if max_num_batched_tokens is None else max_num_batched_tokens
        self.waiting: deque[Request] = deque()     # arrival order; preempted requests go back to the front
        self.running: list[Request] = []           # admission order: the last is preempted first
        self.num_preemptions = 0
        self._generators: dict = {}

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        """Queue a request at the back. Refused (ValueError, nothing queued) if it could never run."""
        r = request
        if not isinstance(r, Request):
            raise ValueError(f"add() takes a Request, got {type(r).__name__}")
        if any(q.id == r.id for q in (*self.waiting, *self.running)):
            raise ValueError(f"request id {r.id!r} is already queued or running: give each request its own id")
        if r.output_ids or r.finish_reason is not None:
            raise ValueError(f"request {r.id!r} has run already: make a new Request")
        if not r.prompt_ids:
            raise ValueError(f"request {r.id!r} has an empty prompt: give at least one token")
        check_ids(r.prompt_ids, self.vocab_size)
        need = len(r.prompt_ids) + r.max_new_tokens - 1        # the KV it holds before its last token
        if need > self.max_len:
            raise ValueError(f"request {r.id!r}: prompt {len(r.prompt_ids)} + max_tokens {r.max_new_tokens} - 1 = {need} "
                             f"tokens of KV, but one sequence holds at most {self.max_len}: shorten it or give the "
                             "runner more blocks")
        if r.params.temperature > 0 and self.sample is None:
            raise ValueError(f"request {r.id!r} asks for temperature {r.params.temperature}, but this scheduler has no "
                             "sample function: pass sample=ops.sample, or use temperature 0")
        self.waiting.append(r)

    def abort(self, request_id) -> bool:
        """Drop a queued or running request (a client went away); its blocks go back. False if unknown."""
        for r in self.waiting:
            if r.id == request_id:
                self.waiting.remove(r)
                r.finish_reason = "abort"
                return True
        for r in self.running:
            if r.id == request_id:
                self._finish(r, "abort")
                return True
        return False

    def step(self) -> list[StepOutput]:
        """One scheduling step: the tokens it produced, at most one per request."""
        preempted = self._make_room()
        batch = []
        if self.running:
            rows = list(self.running)
            logits = self.runner.decode([r.id for r in rows], [r.output_ids[-1] for r in rows])
            batch += zip(rows, self._pick(rows, logits))
        if not preempted:
            batch += self._admit()
        return [self._record(r, tok) for r, tok in batch]

    # ---- the parts of a step ------------------------------------------------------------------
    def _make_room(self) -> bool:
        """Preempt the most recently admitted running sequences until one decode of the rest fits."""
        preempted = False
        while self.running and self.runner.blocks_to_decode([r.id for r in self.running]) > self.runner.num_free:
            r = self.running.pop()
            self.runner.free(r.id)                     # recompute: its KV is dropped, its tokens kept
            self.waiting.appendleft(r)
            self.num_preemptions += 1
            preempted = True
        return preempted

    def _admit(self) -> list[tuple[Request, int]]:
        """Admit waiting requests in order while a row, the token budget and the blocks allow, then
        prefill them together: one runner.prefill_many, one pick (one host read) for all."""
        group, budget, free = [], self.max_num_batched_tokens, self.runner.num_free
        while len(group) < len(self.waiting) and len(self.running) + len(group) < self.max_num_seqs:
            r = self.waiting[len(group)]
            ids = r.token_ids                          # a preempted request: its prompt and its tokens so far
            need = self.runner.blocks_to_prefill(len(ids))
            if len(ids) > budget or need > free:
                break                                  # FCFS: nobody overtakes the head
            group.append(r)
            budget -= len(ids)
            free -= need
        if not self.running and not group and self.waiting:
            raise RuntimeError(f"nothing runs and request {self.waiting[0].id!r} does not fit: {self.runner.num_free} of "
                               f"{self.num_blocks} blocks are free -- something else holds (or leaked) blocks")
        if not group:
            return []
        logits = self.runner.prefill_many([(r.id, r.token_ids) for r in group])
        for r in group:
            self.waiting.popleft()
            self.running.append(r)
        return list(zip(group, self._pick(group, logits)))

    def _pick(self, rows: list[Request], logits: torch.Tensor) -> list[int]:
        """The next token of each row: greedy rows by one argmax (one host read), others sampled."""
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
        r.output_ids.append(token)
        if token in r.eos_token_ids and not r.params.ignore_eos:
            self._finish(r, "stop")
        elif len(r.output_ids) >= r.max_new_tokens:
            self._finish(r, "length")
        return StepOutput(r.id, token, r.finish_reason)

    def _finish(self, r: Request, reason: str) -> None:
        """A finished (or aborted) running request leaves the batch and gives its blocks back."""
        self.running.remove(r)
        self.runner.free(r.id)
        self._generators.pop(r.id, None)
        r.finish_reason = reason


def generate_all(runner, requests, *, max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
                 sample=None) -> list[list[int]]:
    """Run every request through one Scheduler to the end: their new tokens, in the requests'
    order. max_num_seqs None: the runner's max_batch."""
    s = Scheduler(runner, max_num_seqs=max_num_seqs or runner.max_batch,
                  max_num_batched_tokens=max_num_batched_tokens, sample=sample)
    requests = list(requests)
    for r in requests:
        s.add(r)
    while s.has_work:
        s.step()
    return [r.output_ids for r in requests]
