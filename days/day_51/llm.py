"""Day 51 (your code): the engine API -- LLM.generate(prompts, SamplingParams) and a streaming iterator.

nano-vllm's shape: `LLM` owns a model (loaded by the Engine: weights, tokenizer, chat template),
one batched runner over a paged pool (day 48, with day 50's prefix cache if asked) and, per call,
one continuous batching scheduler (day 49). A call turns prompts into Requests, checks them all
before queueing any, then steps the scheduler until every request is done. `stream` yields each
token as its step completes, with the text it completes (one UTF-8-safe detokenizer per request);
`generate` collects the same events into one dict per prompt, in the prompts' order.
"""
from __future__ import annotations

import time  # noqa: F401 (for self.stats.seconds)
from typing import Iterator

from shared.engine.batch import BatchRunner
from shared.engine.llm import Engine
from shared.engine.runner import check_ids  # noqa: F401 (for requests)
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
        # TODO(day 51): normalize the input, then check EVERYTHING before returning anything:
        #   - a lone string (or a flat list of ints) is one prompt; no prompts at all is an error;
        #   - params: None -> SamplingParams(), one SamplingParams -> the same for every prompt, a list
        #     -> one per prompt (another length, or an element that is not a SamplingParams: refuse);
        #   - a string prompt -> ids with self.engine.prompt_ids(prompt, chat); an id list as it is;
        #     empty -> refuse; check_ids(ids, vocab size); prompt + max_tokens over self.max_len -> refuse;
        #   - Request(index, ids, params, eos ids): the tokenizer's eos_token_ids, as a tuple.
        # Each refusal is one ValueError line that names the prompt (or params) by its index.
        raise NotImplementedError("Day 51: LLM.requests -- prompts and params into checked Requests")

    def stream(self, prompts, params=None, *, chat: bool = False) -> Iterator[Delta]:
        """Every token of every request as its step completes: Deltas in step order, each request's
        in its own order. Bad input raises here, before the first next(). Fills self.stats as it goes."""
        return self._run(self.requests(prompts, params, chat=chat))

    def _run(self, reqs: list[Request]) -> Iterator[Delta]:
        """The loop behind stream and generate (a generator)."""
        # TODO(day 51): sched = self.scheduler() (a fresh one per call: it owns the pool while it runs);
        #   add every request; one detokenizer per request (self.tokenizer.detokenizer());
        #   self.stats = Throughput(requests, prompt_tokens), then while the scheduler has work: step(),
        #   update the counters (steps, new_tokens, preemptions, cached_tokens = the runner's growth
        #   since the call began, seconds), and yield one Delta per StepOutput -- its text is what
        #   that request's detokenizer returns for the token.
        #   In a finally: abort every request, so a consumer that stops early leaves the pool empty.
        raise NotImplementedError("Day 51: LLM._run -- step the scheduler, yield a Delta per token")
        yield  # noqa: a generator

    def generate(self, prompts, params=None, *, chat: bool = False, progress: bool = True) -> list[dict]:
        """One dict per prompt, in the prompts' order: text, token_ids (the new tokens, EOS kept),
        finish_reason, prompt_tokens. progress: a tqdm bar of finished requests."""
        # TODO(day 51): reqs = self.requests(...) first (bad input fails before the bar appears);
        #   one dict per request {"text": "", "token_ids": [], "finish_reason": None, "prompt_tokens": n};
        #   then for each Delta of self._run(reqs): append its token and text to outs[d.index], and
        #   on its last token set finish_reason (and advance the bar, when progress: tqdm.auto.tqdm).
        raise NotImplementedError("Day 51: LLM.generate -- collect the Deltas, one dict per prompt, in order")
