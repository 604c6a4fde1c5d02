"""Day 51: the engine API -- LLM.generate(prompts, SamplingParams) and a streaming iterator.

nano-vllm's shape: `LLM` owns a model (loaded by the Engine: weights, tokenizer, chat template),
one batched runner over a paged pool (day 48, with day 50's prefix cache if asked) and, per call,
one continuous batching scheduler (day 49). A call turns prompts into Requests, checks them all
before queueing any, then steps the scheduler until every request is done. `stream` yields each
token as its step completes, with the text it completes (one UTF-8-safe detokenizer per request);
`generate` collects the same events into one dict per prompt, in the prompts' order.
"""
from __future__ import annotations

import time
from typing import Iterator

from shared.engine.batch import BatchRunner
from shared.engine.llm import Engine
from shared.engine.runner import check_ids
from shared.engine.sequence import SamplingParams
from shared.reference.llm import Delta, Throughput    # the event and counter types are given
from shared.reference.scheduler import Request


class LLM:
    """Batched generation over one paged pool.

    model: a name or a folder (shared/models.py), loaded by Engine (tokenizer, dtype, track).
    max_num_seqs: the most requests one step decodes; max_num_batched_tokens: the most prompt
    tokens one step prefills (None: no cap). max_len: the longest sequence, prompt + max_tokens
    (default the model's context). num_blocks of block_size tokens: the pool (None: room for
    max_num_seqs sequences of min(max_len, 1024) tokens; a smaller pool also caps max_len). prefix_cache: share cached prompt
    blocks (day 50). graphs: CUDA graphs for the decode step (None: when the track has them).
    """

    def __init__(self, model: str | None = None, *, track: str | None = None, dtype: str | None = None,
                 max_num_seqs: int = 16, max_num_batched_tokens: int | None = None, max_len: int | None = None,
                 num_blocks: int | None = None, block_size: int = 16, prefix_cache: bool = False,
                 graphs: bool | None = None):
        self.engine = e = Engine(model, track=track, dtype=dtype, max_seq=max_len, graphs=graphs,
                                 block_size=block_size, num_blocks=num_blocks)   # loads and checks them
        self.tokenizer, self.ops, self.max_len = e.tokenizer, e.ops, e.max_seq
        if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be an integer >= 1, got {max_num_seqs}")
        blocks = num_blocks or max(-(-max_num_seqs * min(self.max_len, 1024) // block_size),
                                   -(-self.max_len // block_size))
        self.runner = BatchRunner(e.ops, e.weights, e.device, e.dtype, num_blocks=blocks, block_size=block_size,
                                  max_batch=max_num_seqs, max_len=self.max_len, graphs=e.use_graphs,
                                  prefix_cache=prefix_cache)
        self.max_len = min(self.max_len, self.runner.cache.max_len)     # a small pool caps one sequence
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.scheduler()                      # its settings are checked now, not at the first call
        self.stats = Throughput()

    def scheduler(self):
        """A fresh continuous batching scheduler (day 49) over the runner: one per call, owning the
        pool while the call runs; ops.sample draws the tokens of requests with a temperature."""
        return self.ops.Scheduler(self.runner, max_num_seqs=self.max_num_seqs,
                                  max_num_batched_tokens=self.max_num_batched_tokens, sample=self.ops.sample)

    def requests(self, prompts, params=None, *, chat: bool = False) -> list[Request]:
        """One Request per prompt (id = its index), every one checked: a bad one is a one-line
        ValueError before anything is queued. A prompt is a string (encoded, with the chat template
        if chat) or a list of token ids; a lone string or id list is one prompt. params: None (the
        defaults), one SamplingParams for all, or a list with one per prompt."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and all(isinstance(t, int) for t in prompts)):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts: give at least one")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        params = list(params)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts: give one, or one per prompt")
        eos = tuple(self.tokenizer.eos_token_ids)
        out = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            if not isinstance(p, SamplingParams):
                raise ValueError(f"params {i} is a {type(p).__name__}: give a SamplingParams")
            ids = self.engine.prompt_ids(prompt, chat) if isinstance(prompt, str) else list(prompt)
            if not ids:
                raise ValueError(f"prompt {i} is empty: give at least one token")
            check_ids(ids, self.engine.config.vocab_size)
            if len(ids) + p.max_tokens > self.max_len:
                raise ValueError(f"prompt {i}: {len(ids)} tokens + max_tokens {p.max_tokens} = "
                                 f"{len(ids) + p.max_tokens} exceeds the context limit {self.max_len}")
            out.append(Request(i, ids, p, eos))
        return out

    def stream(self, prompts, params=None, *, chat: bool = False) -> Iterator[Delta]:
        """Every token of every request as its step completes: Deltas in step order, each request's
        in its own order. Bad input raises here, before the first next(). Fills self.stats as it goes."""
        return self._run(self.requests(prompts, params, chat=chat))

    def _run(self, reqs: list[Request]) -> Iterator[Delta]:
        sched = self.scheduler()
        for r in reqs:
            sched.add(r)
        detoks = [self.tokenizer.detokenizer() for _ in reqs]
        self.stats = s = Throughput(requests=len(reqs), prompt_tokens=sum(len(r.prompt_ids) for r in reqs))
        cached0, t0 = self.runner.cached_tokens, time.perf_counter()
        try:
            while sched.has_work:
                outputs = sched.step()
                s.steps += 1
                s.new_tokens += len(outputs)
                s.preemptions = sched.num_preemptions
                s.cached_tokens = self.runner.cached_tokens - cached0
                s.seconds = time.perf_counter() - t0
                for o in outputs:
                    yield Delta(o.request_id, o.token_id, detoks[o.request_id].push(o.token_id), o.finish_reason)
        finally:                                  # a consumer that stops early: the pool is emptied
            for r in reqs:
                sched.abort(r.id)

    def generate(self, prompts, params=None, *, chat: bool = False, progress: bool = True) -> list[dict]:
        """One dict per prompt, in the prompts' order: text, token_ids (the new tokens, EOS kept),
        finish_reason, prompt_tokens. progress: a tqdm bar of finished requests."""
        reqs = self.requests(prompts, params, chat=chat)     # checked before the bar appears
        outs = [{"text": "", "token_ids": [], "finish_reason": None, "prompt_tokens": len(r.prompt_ids)}
                for r in reqs]
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(reqs), desc="Generating", dynamic_ncols=True)
        try:
            for d in self._run(reqs):
                o = outs[d.index]
                o["token_ids"].append(d.token_id)
                o["text"] += d.text
                if d.finished:
                    o["finish_reason"] = d.finish_reason
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(tok_s=f"{self.stats.tok_s:.0f}")
        finally:
            if bar is not None:
                bar.close()
        return outs
