"""Day 49 checker: the continuous batching scheduler. Run: pytest checkers/day_49

The oracle is each request decoded alone. Most tests drive your Scheduler over a toy runner:
BatchRunner's interface and block accounting (a real BlockAllocator) around a toy model whose
next token is a hash of the whole sequence so far -- a lost, repeated or reordered token changes
every later one, and a thousand steps cost milliseconds. Seeded random scenarios (requests
arriving over time, prompt and output lengths, EOS ids, block sizes, pools from roomy to so small
that sequences must be preempted) are checked after every step:
- at most one token per request per step; each request finishes exactly once ('stop' on an EOS
  id, which is kept; 'length' at max_tokens) and produces nothing after;
- at most max_num_seqs sequences hold blocks, a step's prefills stay within
  max_num_batched_tokens, nobody prefills or decodes without the blocks for it;
- FCFS: the sequences holding blocks are always the oldest unfinished requests, first tokens
  come in arrival order, a preempted sequence is the most recently admitted one and comes back
  with its prompt + every token it had generated;
- no starvation: a request added while requests with max_tokens N_1..N_k are unfinished gets
  its first token within 1 + N_1 + ... + N_k steps and finishes within that sum + its own
  max_tokens (the bound in the Scheduler's docstring);
- at the end: every request's tokens == decoded alone, the pool is full again, no work left.
Then bad requests (one line each, nothing queued), abort, seeded sampling == alone, and
generate_all. The tiny model runs through day 48's BatchRunner (reference kernels in the
simulator; the track's kernels and CUDA graphs on a GPU) in a pool small enough to preempt.
"""
import random
import time
from types import SimpleNamespace

import pytest
import torch

from shared import reference
from shared.course.registry import Ops
from shared.course.testing import record_bench
from shared.engine.attention import StaticCache
from shared.engine.batch import BatchRunner
from shared.engine.errors import OutOfBlocksError
from shared.engine.runner import ModelRunner
from shared.engine.sequence import SamplingParams
from shared.reference.scheduler import Request

V = 61                   # the toy model's vocabulary


# ---- the toy model and runner --------------------------------------------------------------------------
def toy_next(ids):
    """The toy model's greedy next token: a hash of every token so far."""
    h = 7
    for t in ids:
        h = (h * 1_000_003 + t + 1) % 2_147_483_647
    return h % V


def toy_logits(ids):
    """Logits [V] whose argmax is toy_next(ids); the rest are small and uneven, so sampling with a
    temperature has a shape."""
    h = toy_next(ids)
    x = torch.tensor([((h * 31 + 17 * i) % 13) / 13.0 for i in range(V)], dtype=torch.float32)
    x[h] = 3.0
    return x


def toy_alone(req):
    """Greedy decoding of one request by itself: the oracle."""
    ids, out = list(req.prompt_ids), []
    while len(out) < req.params.max_tokens:
        out.append(toy_next(ids + out))
        if out[-1] in req.eos_token_ids and not req.params.ignore_eos:
            break
    return out


def sampled_alone(req):
    """The request alone with temperature: its own generator, seeded as the Scheduler's docstring says."""
    p, ids, out = req.params, list(req.prompt_ids), []
    gen = torch.Generator(device="cpu").manual_seed(p.seed)
    while len(out) < p.max_tokens:
        out.append(int(reference.sample(toy_logits(ids + out), p.temperature, p.top_k, p.top_p, gen)))
        if out[-1] in req.eos_token_ids and not p.ignore_eos:
            break
    return out


class ToyRunner:
    """BatchRunner's interface with its block accounting (reference.BlockAllocator) and the toy model.
    Calls a real runner would refuse raise here too (OutOfBlocksError, ValueError)."""

    def __init__(self, num_blocks, block_size, *, max_batch=8, max_blocks=None, vocab=V):
        self.allocator = reference.BlockAllocator(num_blocks, block_size)
        max_len = (max_blocks or num_blocks) * block_size
        self.cache = SimpleNamespace(num_blocks=num_blocks, block_size=block_size, max_len=max_len,
                                     allocator=self.allocator)
        self.decoder = SimpleNamespace(weights=SimpleNamespace(config=SimpleNamespace(vocab_size=vocab)))
        self.block_size, self.max_batch, self.vocab = block_size, max_batch, vocab
        self.tokens = {}

    @property
    def num_free(self):
        return self.allocator.num_free

    def length(self, seq_id):
        return self.allocator.length(seq_id)

    def blocks_to_prefill(self, num_tokens):
        return -(-num_tokens // self.block_size)

    def blocks_to_decode(self, seq_ids):
        return sum(self.length(s) % self.block_size == 0 for s in seq_ids)

    def prefill(self, seq_id, ids):
        ids = list(ids)
        if not 1 <= len(ids) <= self.cache.max_len or not all(0 <= t < self.vocab for t in ids):
            raise ValueError(f"prefill({seq_id!r}): {len(ids)} tokens, ids must be in 0..{self.vocab - 1}")
        self.allocator.allocate(seq_id, len(ids))           # ValueError (held) / OutOfBlocksError
        self.tokens[seq_id] = ids
        return toy_logits(ids)

    def prefill_many(self, items):
        """Like BatchRunner.prefill_many: all or nothing (the blocks of every prompt checked first)."""
        items = [(s, list(ids)) for s, ids in items]
        need = sum(self.blocks_to_prefill(len(ids)) for _, ids in items)
        if not items or len({s for s, _ in items}) != len(items) or need > self.num_free:
            raise OutOfBlocksError(f"prefill_many of {[s for s, _ in items]}: distinct sequences, {need} blocks "
                                   f"needed, {self.num_free} free")
        return torch.stack([self.prefill(s, ids) for s, ids in items])

    def decode(self, seq_ids, tokens):
        seq_ids, tokens = list(seq_ids), list(tokens)
        B = len(seq_ids)
        if not 1 <= B <= self.max_batch or len(tokens) != B or len(set(seq_ids)) != B:
            raise ValueError(f"decode of {seq_ids} with tokens {tokens}: 1..{self.max_batch} distinct sequences, "
                             "one token each")
        for s in seq_ids:
            if self.length(s) >= self.cache.max_len:
                raise ValueError(f"sequence {s!r} holds {self.length(s)} tokens: its table is full")
        need = self.blocks_to_decode(seq_ids)
        if need > self.num_free:
            raise OutOfBlocksError(f"this decode step needs {need} new blocks, {self.num_free} are free")
        for s, t in zip(seq_ids, tokens):
            self.allocator.append_slot(s)
            self.tokens[s].append(t)
        return torch.stack([toy_logits(self.tokens[s]) for s in seq_ids])

    def free(self, seq_id):
        self.allocator.free(seq_id)
        del self.tokens[seq_id]


class Watch:
    """Wraps a runner (toy or real): records each step's calls and checks them as they happen."""

    def __init__(self, runner, max_num_seqs):
        self.inner, self.limit = runner, max_num_seqs
        self.held = {}               # seq id -> tokens its KV holds, in admission order
        self.events = []
        self.prefills = 0
        self.forwards = 0            # prefill calls: a step's new prompts share one forward

    def __getattr__(self, name):     # num_free, length, blocks_to_*, max_batch, cache, decoder, block_size
        return getattr(self.inner, name)

    def prefill(self, seq_id, ids):
        ids = list(ids)
        need, free = self.inner.blocks_to_prefill(len(ids)), self.inner.num_free
        assert seq_id not in self.held, \
            f"prefill of {seq_id!r}, whose blocks are still held: free a preempted sequence before it comes back"
        assert need <= free, (f"prefill of {seq_id!r} ({len(ids)} tokens) needs {need} blocks, {free} are free: admit "
                              "only when runner.blocks_to_prefill(T) <= runner.num_free")
        assert len(self.held) < self.limit, \
            f"admitting {seq_id!r} makes {len(self.held) + 1} running sequences, max_num_seqs is {self.limit}"
        out = self.inner.prefill(seq_id, ids)
        self.held[seq_id] = ids
        self.events.append(("prefill", seq_id, ids))
        self.prefills += 1
        self.forwards += 1
        return out

    def prefill_many(self, items):
        items = [(s, list(ids)) for s, ids in items]
        need, free = sum(self.inner.blocks_to_prefill(len(ids)) for _, ids in items), self.inner.num_free
        for s, ids in items:
            assert s not in self.held, \
                f"prefill of {s!r}, whose blocks are still held: free a preempted sequence before it comes back"
        assert need <= free, (f"prefill_many of {len(items)} prompts needs {need} blocks, {free} are free: admit only "
                              "while the blocks_to_prefill(T) of the admitted ones add up to at most runner.num_free")
        assert len(self.held) + len(items) <= self.limit, \
            f"admitting {len(items)} makes {len(self.held) + len(items)} running sequences, max_num_seqs is {self.limit}"
        out = self.inner.prefill_many(items)
        for s, ids in items:
            self.held[s] = ids
            self.events.append(("prefill", s, ids))
        self.prefills += len(items)
        self.forwards += 1
        return out

    def decode(self, seq_ids, tokens):
        seq_ids, tokens = list(seq_ids), list(tokens)
        need, free = self.inner.blocks_to_decode(seq_ids), self.inner.num_free
        assert need <= free, (f"a decode of {len(seq_ids)} sequences needs {need} new blocks, {free} are free: preempt "
                              "(the most recently admitted first) until runner.blocks_to_decode(...) fits")
        assert len(seq_ids) <= self.limit, f"a decode of {len(seq_ids)} sequences, max_num_seqs is {self.limit}"
        out = self.inner.decode(seq_ids, tokens)
        for s, t in zip(seq_ids, tokens):
            self.held[s].append(t)
        self.events.append(("decode", seq_ids, tokens))
        return out

    def free(self, seq_id):
        last = list(self.held)[-1] if self.held else None
        self.inner.free(seq_id)
        del self.held[seq_id]
        self.events.append(("free", seq_id, last == seq_id))


class Drive:
    """Your Scheduler over a watched runner: add() and step() with every per-step check."""

    def __init__(self, day, runner, *, max_num_seqs, max_num_batched_tokens=None, sample=None):
        self.runner = Watch(runner, max_num_seqs)
        kw = dict(max_num_seqs=max_num_seqs, sample=sample)
        if max_num_batched_tokens is not None:
            kw["max_num_batched_tokens"] = max_num_batched_tokens
        self.s = day.Scheduler(self.runner, **kw)
        self.budget = max_num_batched_tokens
        self.steps = 0
        self.order = []          # requests in arrival order
        self.log = {}            # id -> what we saw
        self.preemptions = 0

    def add(self, req):
        older = [r for r in self.order if self.log[r.id]["done"] is None]
        self.s.add(req)
        self.order.append(req)
        self.log[req.id] = dict(req=req, added=self.steps, first=None, done=None, tokens=[], reason=None,
                                older=sum(r.params.max_tokens for r in older))

    def unfinished(self):
        return [r for r in self.order if self.log[r.id]["done"] is None]

    def step(self):
        self.runner.events = []
        forwards = self.runner.forwards
        outs = self.s.step()
        assert self.runner.forwards - forwards <= 1, (
            f"step {self.steps + 1}: {self.runner.forwards - forwards} prefill calls: a step's admitted prompts go "
            "to the runner together, in one runner.prefill_many (one forward)")
        self.steps += 1
        assert isinstance(outs, list), f"step() returns a list of StepOutput, got {type(outs).__name__}"
        seen = [o.request_id for o in outs]
        assert len(seen) == len(set(seen)), f"step {self.steps}: a request got two tokens in one step: {seen}"
        finished = {o.request_id for o in outs if o.finish_reason is not None}
        # what the runner saw this step, before this step's tokens are recorded
        for kind, sid, extra in self.runner.events:
            if kind == "prefill":
                entry = self.log[sid]
                want = list(entry["req"].prompt_ids) + entry["tokens"]
                assert extra == want, (f"step {self.steps}: request {sid!r} prefilled {len(extra)} tokens, expected its "
                                       f"prompt + the {len(entry['tokens'])} tokens it generated ({len(want)}): a preempted "
                                       "request comes back with its generated tokens after its prompt")
            if kind == "free" and sid not in finished:
                self.preemptions += 1
                assert extra, (f"step {self.steps}: request {sid!r} was preempted, but it was not the most recently "
                               "admitted running sequence: preempt from the back of the running list")
        if self.budget is not None:
            T = sum(len(ids) for kind, _, ids in self.runner.events if kind == "prefill")
            assert T <= self.budget, f"step {self.steps}: its prefills ran {T} tokens, max_num_batched_tokens is {self.budget}"
        for o in outs:
            assert o.request_id in self.log, f"step {self.steps}: a token for an unknown request {o.request_id!r}"
            entry = self.log[o.request_id]
            assert entry["done"] is None, \
                f"step {self.steps}: request {o.request_id!r} got a token after it finished (step {entry['done']})"
            entry["tokens"].append(int(o.token_id))
            if entry["first"] is None:
                entry["first"] = self.steps
            if o.finish_reason is not None:
                entry["done"], entry["reason"] = self.steps, o.finish_reason
        for sid in finished:
            assert sid not in self.runner.held, f"step {self.steps}: request {sid!r} finished but still holds blocks"
        held = list(self.runner.held)
        oldest = [r.id for r in self.unfinished()][:len(held)]
        assert sorted(map(repr, held)) == sorted(map(repr, oldest)), (
            f"step {self.steps}: the running sequences are {held}, but the {len(held)} oldest unfinished requests are "
            f"{oldest}: admit from the head of the waiting queue only, and put a preempted request back at its head")
        assert self.s.has_work == bool(self.unfinished()), \
            f"step {self.steps}: has_work is {self.s.has_work} with {len(self.unfinished())} requests unfinished"
        return outs

    def run(self, arrivals=None, cap=None):
        """arrivals: {step: [requests added before that step]}; step until nothing is left."""
        arrivals = dict(arrivals or {})
        total = sum(r.params.max_tokens for rs in arrivals.values() for r in rs) + sum(
            r.params.max_tokens for r in self.order)
        cap = cap or total + max(arrivals, default=0) + 10
        while True:
            for r in arrivals.pop(self.steps, []):
                self.add(r)
            if not arrivals and not self.s.has_work:
                break
            assert self.steps < cap, f"{self.steps} steps and requests are still unfinished: is anything running?"
            self.step()
        return self

    def check_end(self, alone=toy_alone):
        for r in self.order:
            e = self.log[r.id]
            want = alone(r)
            assert e["done"] is not None, f"request {r.id!r} never finished"
            assert e["tokens"] == want, (f"request {r.id!r} (prompt {len(r.prompt_ids)} tokens, max_tokens "
                                         f"{r.params.max_tokens}): got {e['tokens']}, decoded alone {want}")
            assert r.output_ids == want, f"request {r.id!r}: output_ids {r.output_ids} but the steps gave {want}"
            stop = want[-1] in r.eos_token_ids and not r.params.ignore_eos
            assert e["reason"] == ("stop" if stop else "length") and r.finish_reason == e["reason"], \
                (f"request {r.id!r} ended with finish_reason {e['reason']!r} (request: {r.finish_reason!r}); expected "
                 f"{'stop' if stop else 'length'!r}")
            assert e["first"] - e["added"] <= 1 + e["older"], (
                f"request {r.id!r} waited {e['first'] - e['added']} steps for its first token; requests ahead of it "
                f"had {e['older']} tokens to make, so the bound is {1 + e['older']}")
            assert e["done"] - e["added"] <= e["older"] + r.params.max_tokens, (
                f"request {r.id!r} took {e['done'] - e['added']} steps; the bound is {e['older']} (the requests ahead "
                f"of it) + {r.params.max_tokens} (its own max_tokens)")
        firsts = [self.log[r.id]["first"] for r in self.order]
        assert firsts == sorted(firsts), f"first tokens must come in arrival order (FCFS): first steps {firsts}"
        inner = self.runner.inner
        assert inner.num_free == inner.cache.num_blocks, \
            f"every request finished but {inner.cache.num_blocks - inner.num_free} blocks are still held"
        assert not self.runner.held and not self.s.has_work


def req(rid, prompt, max_tokens, eos=(), **params):
    return Request(rid, list(prompt), SamplingParams(max_tokens=max_tokens, **params), tuple(eos))


def toy_prompt(rng, n):
    return [rng.randrange(V) for _ in range(n)]


def one_line(e):
    msg = str(e.value)
    assert msg and "\n" not in msg, f"one line, please: {msg!r}"
    return msg


# ---- the toy model: one request, scripted cases ----------------------------------------------------------
def test_one_request_gets_its_tokens_one_per_step(day):
    runner = ToyRunner(16, 4)
    d = Drive(day, runner, max_num_seqs=4)
    assert not d.s.has_work and d.s.step() == [], "a new scheduler has no work and an idle step produces nothing"
    r = req("a", [5, 9, 14, 2, 33], 9)
    d.add(r)
    assert d.s.has_work, "has_work after add()"
    while d.s.has_work:
        outs = d.step()
        assert len(outs) == 1 and outs[0].request_id == "a", f"one running request: one token per step, got {outs}"
    assert d.steps == 9, f"9 tokens, one per step (the prefill gives the first): took {d.steps} steps"
    d.check_end()


def test_eos_is_kept_and_ends_the_request(day):
    """An EOS id ends the request right after it is produced ('stop', the EOS kept, nothing after);
    with ignore_eos it goes on to max_tokens ('length')."""
    prompt = [3, 1, 4, 1, 5]
    plain = toy_alone(req("x", prompt, 12))
    eos = plain[3]
    first = plain.index(eos)
    d = Drive(day, ToyRunner(16, 4), max_num_seqs=2)
    d.run({0: [req("stops", prompt, 12, eos=(eos,)), req("ignores", prompt, 12, eos=(eos,), ignore_eos=True)]})
    assert d.log["stops"]["tokens"] == plain[:first + 1], \
        f"EOS {eos} first comes as token {first}: the output ends with it, got {d.log['stops']['tokens']}"
    d.check_end()


def test_preemption_recomputes_and_keeps_every_token(day):
    """6 blocks of 4: three requests of 7-token prompts fit at admission (2 blocks each), but not
    their decodes. The most recently admitted is preempted, comes back with its tokens, and every
    output equals the request decoded alone."""
    rng = random.Random(49)
    d = Drive(day, ToyRunner(6, 4, max_batch=4), max_num_seqs=4)
    d.run({0: [req(i, toy_prompt(rng, 7), 10) for i in range(3)]})
    assert d.preemptions >= 1, "a pool this small must preempt: check blocks_to_decode against num_free before a decode"
    assert d.s.num_preemptions == d.preemptions, \
        f"num_preemptions is {d.s.num_preemptions}, but {d.preemptions} running sequences were freed unfinished"
    d.check_end()


def test_max_num_seqs_one_runs_requests_one_after_another(day):
    rng = random.Random(7)
    d = Drive(day, ToyRunner(32, 4), max_num_seqs=1)
    d.run({0: [req(i, toy_prompt(rng, 3 + i), 4 + i) for i in range(4)]})
    spans = [(d.log[i]["first"], d.log[i]["done"]) for i in range(4)]
    assert all(spans[i][1] < spans[i + 1][0] for i in range(3)), f"max_num_seqs=1: (first, done) steps {spans} overlap"
    d.check_end()


def test_prefill_budget_limits_a_steps_prompt_tokens(day):
    """max_num_batched_tokens = 24 = max_len: five 14-token prompts are admitted one per step."""
    rng = random.Random(11)
    d = Drive(day, ToyRunner(60, 4, max_blocks=6), max_num_seqs=8, max_num_batched_tokens=24)
    d.run({0: [req(i, toy_prompt(rng, 14), 5) for i in range(5)]})
    assert [d.log[i]["first"] for i in range(5)] == [1, 2, 3, 4, 5], \
        f"one 14-token prompt fits a 24-token step: first tokens at steps {[d.log[i]['first'] for i in range(5)]}"
    d.check_end()


# ---- the toy model: random arrivals, lengths, pools ---------------------------------------------------------
def scenario(seed):
    """A seeded workload: requests arriving over time, ragged prompts and outputs, EOS ids, and a pool
    from just big enough for the longest request (preemption galore) to roomy."""
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4, 8])
    max_num_seqs = rng.randint(1, 8)
    reqs, arrivals = [], {}
    for i in range(rng.randint(1, 14)):
        eos = tuple(rng.sample(range(V), rng.choice([0, 1, 3])))
        r = req(f"r{i}", toy_prompt(rng, rng.randint(1, 24)), rng.randint(1, 20), eos=eos, ignore_eos=rng.random() < 0.1)
        reqs.append(r)
        arrivals.setdefault(rng.choice([0, 0, rng.randint(0, 40)]), []).append(r)
    longest = max(len(r.prompt_ids) + r.params.max_tokens - 1 for r in reqs)
    need = -(-longest // bs)
    if rng.random() < 0.5:
        num_blocks = need + rng.randint(0, 3)
    else:
        num_blocks = sum(-(-(len(r.prompt_ids) + r.params.max_tokens) // bs) for r in reqs) + rng.randint(0, 4)
    budget = need * bs + rng.randint(0, 30) if rng.random() < 0.4 else None
    runner = ToyRunner(num_blocks, bs, max_batch=max_num_seqs + rng.randint(0, 2), max_blocks=need)
    return runner, dict(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget), arrivals


@pytest.mark.parametrize("seeds", [range(i, 200, 8) for i in range(8)], ids=[f"seeds_{i}_mod_8" for i in range(8)])
def test_random_arrivals_finish_once_fcfs_within_the_bound(day, seeds):
    for seed in seeds:
        runner, kw, arrivals = scenario(seed)
        d = Drive(day, runner, **kw)
        try:
            d.run(arrivals)
            d.check_end()
        except AssertionError as e:
            raise AssertionError(f"scenario {seed} ({runner.cache.num_blocks} blocks of {runner.block_size}, {kw}): "
                                 f"{e}") from None


def test_small_pools_preempt_and_outputs_stay_identical(day):
    """Across tight scenarios preemption happens -- often -- and changes no output."""
    total = 0
    for seed in range(40):
        rng = random.Random(1000 + seed)
        bs = rng.choice([2, 4])
        reqs = [req(i, toy_prompt(rng, rng.randint(4, 12)), rng.randint(6, 16)) for i in range(rng.randint(3, 7))]
        need = -(-max(len(r.prompt_ids) + r.params.max_tokens - 1 for r in reqs) // bs)
        d = Drive(day, ToyRunner(need + 1, bs, max_blocks=need), max_num_seqs=8)
        d.run({0: reqs[:2], 1: reqs[2:4], 3: reqs[4:]})
        d.check_end()
        total += d.preemptions
    assert total >= 20, f"40 tight pools preempted only {total} times: preempt when a decode's blocks do not fit"


# ---- bad requests, abort, sampling, generate_all ------------------------------------------------------------
def test_bad_requests_are_refused_in_one_line(day):
    runner = ToyRunner(6, 4, max_batch=4)                   # one sequence holds at most 24 tokens
    s = day.Scheduler(runner, max_num_seqs=2)
    ok = req("ok", [1, 2, 3], 4)
    s.add(ok)
    done = Request("done", [1, 2], SamplingParams(max_tokens=3), output_ids=[5])
    cases = [("prompt 20 + max_tokens 6 - 1 = 25 tokens > 24", req("long", [1] * 20, 6)),
             ("a prompt of 25 tokens", req("long2", [1] * 25, 1)),
             ("an id that is already queued", req("ok", [4], 2)),
             ("an empty prompt", req("empty", [], 2)),
             (f"token id {V}", req("vocab", [1, V], 2)),
             ("token id -1", req("neg", [-1, 1], 2)),
             ("temperature 0.7 without a sample function", req("hot", [1, 2], 2, temperature=0.7)),
             ("a request that has already run", done),
             ("a list instead of a Request", [1, 2, 3])]
    for what, bad in cases:
        with pytest.raises(ValueError) as e:
            s.add(bad)
        one_line(e)
        assert list(s.waiting) == [ok] and not s.running, f"{what}: refused, yet the queues changed"
    while s.has_work:
        s.step()
    assert ok.output_ids == toy_alone(ok) and runner.num_free == 6
    edge = req("edge", [7] * 20, 5)                         # 20 + 5 - 1 = 24: exactly one full table
    d = Drive(day, runner, max_num_seqs=1)
    d.run({0: [edge]})
    d.check_end()


def test_bad_scheduler_settings_are_refused(day):
    runner = ToyRunner(6, 4, max_batch=4)
    for what, kw in (("max_num_seqs=0", dict(max_num_seqs=0)), ("max_num_seqs > max_batch", dict(max_num_seqs=5)),
                     ("max_num_batched_tokens < max_len (24)", dict(max_num_seqs=2, max_num_batched_tokens=23))):
        with pytest.raises(ValueError) as e:
            day.Scheduler(runner, **kw)
        one_line(e)
    runner.prefill("someone", [1, 2, 3])
    with pytest.raises(ValueError) as e:
        day.Scheduler(runner, max_num_seqs=2)
    one_line(e)


def test_abort_frees_and_the_rest_is_unchanged(day):
    rng = random.Random(3)
    runner = ToyRunner(40, 4)
    d = Drive(day, runner, max_num_seqs=2)
    reqs = [req(i, toy_prompt(rng, 6), 12) for i in range(4)]
    for r in reqs:
        d.add(r)
    d.step(), d.step()
    free = runner.num_free
    held = len(runner.allocator.block_table(0))
    assert d.s.abort(0) is True, "abort of a running request returns True"
    assert runner.num_free == free + held, f"abort must free the request's {held} blocks"
    assert reqs[0].finish_reason == "abort"
    d.log[0]["done"] = d.steps
    assert d.s.abort(3) is True and reqs[3].finish_reason == "abort", "abort of a waiting request returns True"
    d.log[3]["done"] = d.steps
    assert d.s.abort("nobody") is False, "abort of an unknown id returns False"
    d.order = [reqs[1], reqs[2]]
    d.run()
    d.check_end()


def test_seeded_sampling_equals_each_request_alone(day):
    """Temperature with a seed: each request draws from its own generator, so batching and
    preemption change nothing."""
    rng = random.Random(5)
    reqs = [req(i, toy_prompt(rng, rng.randint(3, 9)), rng.randint(5, 14), temperature=0.8 + 0.1 * i,
                top_k=[0, 20][i % 2], top_p=[1.0, 0.9][i // 2 % 2], seed=100 + i) for i in range(5)]
    d = Drive(day, ToyRunner(12, 2), max_num_seqs=5, sample=reference.sample)
    d.run({0: reqs[:3], 2: reqs[3:]})
    d.check_end(alone=sampled_alone)


def test_generate_all_returns_outputs_in_request_order(day):
    rng = random.Random(13)
    reqs = [req(i, toy_prompt(rng, rng.randint(1, 10)), rng.randint(1, 12), eos=(3, 4)) for i in range(9)]
    runner = ToyRunner(12, 4)
    outs = day.generate_all(runner, reqs, max_num_seqs=4)
    assert outs == [toy_alone(r) for r in reqs], "generate_all: each request's tokens, in the requests' order"
    assert runner.num_free == 12, "generate_all leaves the pool full"


# ---- the tiny model through day 48's BatchRunner ------------------------------------------------------------
@pytest.fixture(scope="module")
def table(ops, sizes):
    """In the simulator: reference kernels (a simulated GEMV of every weight takes minutes). On a GPU:
    every component from the track."""
    return sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})


@pytest.fixture(scope="module")
def bops(ops, table):
    return Ops(ops.track, overrides=table)


@pytest.fixture(scope="module")
def weights(tiny_model, device):
    w = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return w


def model_alone(bops, weights, device, r, max_seq=256):
    """Greedy alone on a static cache; also each step's top-2 gap (a near tie may flip with the
    summation order of a batch)."""
    mr = ModelRunner(bops, weights, StaticCache(bops, weights.config, max_seq, weights.dtype, device), device)
    ids, out, gaps = list(r.prompt_ids), [], []
    while len(out) < r.params.max_tokens:
        logits = mr.next_logits(ids + out).float()
        top = logits.topk(2).values
        gaps.append(float(top[0] - top[1]))
        out.append(int(logits.argmax()))
        if out[-1] in r.eos_token_ids:
            break
    return out, gaps


def check_model_outputs(d, bops, weights, device, tie):
    for r in d.order:
        want, gaps = model_alone(bops, weights, device, r)
        got = d.log[r.id]["tokens"]
        for j, (g, w) in enumerate(zip(got, want)):
            if g != w:
                assert gaps[j] < tie, (f"request {r.id!r}: token {j} is {g}, decoded alone {w} (top-2 gap {gaps[j]:.2e}): "
                                       f"got {got}, alone {want}")
                break
        else:
            assert got == want, f"request {r.id!r}: got {got}, decoded alone {want}"
    inner = d.runner.inner
    assert inner.num_free == inner.cache.num_blocks, f"{inner.cache.num_blocks - inner.num_free} blocks still held"
    assert not d.s.has_work


def model_requests(rng, n, vocab, *, prompts=(2, 12), outputs=(4, 12), eos=()):
    return [req(i, [rng.randrange(3, vocab) for _ in range(rng.randint(*prompts))], rng.randint(*outputs), eos=eos)
            for i in range(n)]


def test_runner_prefill_many_is_each_prompt_alone(bops, weights, device):
    """The engine's BatchRunner.prefill_many (what your _admit calls): n prompts of odd lengths in
    one forward give each prompt's own logits, leave each sequence's KV as a prefill alone would
    (the next decode step's logits agree), and a refused call changes nothing."""
    rng = random.Random(4902)
    V = weights.config.vocab_size
    prompts = [[rng.randrange(3, V) for _ in range(n)] for n in (1, 7, 3, 12, 5)]
    together = BatchRunner(bops, weights, device, torch.float32, num_blocks=24, block_size=4, max_batch=8)
    alone = BatchRunner(bops, weights, device, torch.float32, num_blocks=24, block_size=4, max_batch=8)
    got = together.prefill_many([(i, p) for i, p in enumerate(prompts)])
    assert tuple(got.shape) == (len(prompts), V), f"prefill_many gave {tuple(got.shape)}, want ({len(prompts)}, {V})"
    for i, p in enumerate(prompts):
        want = alone.prefill(i, p)
        torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-4, msg=lambda m: f"prompt {i}: {m}")
    assert together.num_free == alone.num_free
    ids, nxt = list(range(len(prompts))), [rng.randrange(3, V) for _ in prompts]
    torch.testing.assert_close(together.decode(ids, nxt), alone.decode(ids, nxt), rtol=1e-4, atol=1e-4)
    free = together.num_free
    with pytest.raises(ValueError):
        together.prefill_many([("a", [5, 6]), ("b", [5, V + 3])])            # an id out of range
    with pytest.raises(ValueError):
        together.prefill_many([("a", [5, 6]), (0, [7])])                     # sequence 0 is held already
    with pytest.raises(OutOfBlocksError):
        together.prefill_many([("a", [5] * 40), ("b", [6] * 40)])            # 20 blocks, fewer are free
    assert together.num_free == free, "a refused prefill_many must change nothing"
    assert tuple(together.prefill_many([("a", [5, 6]), ("b", [7])]).shape) == (2, V)


def test_tiny_model_in_a_small_pool_equals_each_request_alone(day, bops, weights, device):
    """5 requests arriving over 4 steps, 8 blocks of 4 for up to 4 rows: admissions wait for blocks,
    sequences are preempted and recomputed, and every request gets its own greedy tokens."""
    runner = BatchRunner(bops, weights, device, torch.float32, num_blocks=8, block_size=4, max_batch=4)
    rng = random.Random(490)
    reqs = model_requests(rng, 5, weights.config.vocab_size)
    eos = model_alone(bops, weights, device, reqs[1])[0][2]
    reqs[1].eos_token_ids = (eos,)                  # request 1 stops at its third token
    d = Drive(day, runner, max_num_seqs=4)
    d.run({0: reqs[:2], 1: reqs[2:4], 4: reqs[4:]})
    assert d.preemptions >= 1, "8 blocks of 4 for these requests must preempt"
    check_model_outputs(d, bops, weights, device, tie=1e-5)
    assert d.log[1]["tokens"][-1] == eos and d.log[1]["reason"] == "stop"


def test_tiny_model_generate_all(day, bops, weights, device):
    runner = BatchRunner(bops, weights, device, torch.float32, num_blocks=40, block_size=4, max_batch=4)
    reqs = model_requests(random.Random(491), 6, weights.config.vocab_size, outputs=(2, 6))
    outs = day.generate_all(runner, reqs, max_num_seqs=3)
    assert outs == [model_alone(bops, weights, device, r)[0] for r in reqs]
    assert runner.num_free == 40


# ---- GPU: the track's kernels with CUDA graphs; the throughput of continuous batching ------------------------
@pytest.mark.gpu
def test_gpu_graphs_random_arrivals_equal_alone(day, bops, weights, device):
    """fp32, the track's kernels, a graph per batch-size bucket: 40 requests arriving over 30 steps
    in a pool that preempts (block size 16); every request's tokens equal it decoded alone (up to a
    near tie)."""
    runner = BatchRunner(bops, weights, device, torch.float32, num_blocks=24, block_size=16, max_batch=16, graphs=True)
    runner.warmup()
    rng = random.Random(4900)
    reqs = model_requests(rng, 40, weights.config.vocab_size, prompts=(1, 100), outputs=(1, 60))
    arrivals = {}
    for r in reqs:
        arrivals.setdefault(rng.randint(0, 30), []).append(r)
    d = Drive(day, runner, max_num_seqs=16).run(arrivals)
    assert d.preemptions >= 1, "24 blocks of 16 for 40 requests must preempt"
    check_model_outputs(d, bops, weights, device, tie=1e-3)


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_continuous_batching_vs_one_at_a_time(day, track, smollm2):
    """fp16 SmolLM2, graphs: 32 requests (prompts 32-256, outputs 32-128, seeded) through your
    Scheduler with max_num_seqs 32 and with 1, in one run. Records tokens/s of both, the steps, the
    preemptions and the steps static batching (waves of 32, each as long as its longest) would take.
    Fails only if 32 rows make fewer than 3x the tokens/s of one."""
    from shared.engine import Engine
    e = Engine(str(smollm2), track=track, dtype="fp16", graphs=False, paged=False)
    rng = random.Random(4901)
    specs = [([rng.randrange(3, e.config.vocab_size) for _ in range(rng.randint(32, 256))], rng.randint(32, 128))
             for _ in range(32)]
    result = {"model": "smollm2", "dtype": "fp16", "gpu": torch.cuda.get_device_name(), "requests": len(specs)}
    for n in (32, 1):
        runner = BatchRunner(e.ops, e.weights, e.device, e.dtype, num_blocks=32 * 24, block_size=16, max_batch=32,
                             max_len=384, graphs=True)
        runner.warmup()
        reqs = [req(i, p, m, ignore_eos=True) for i, (p, m) in enumerate(specs)]
        s = day.Scheduler(runner, max_num_seqs=n)
        for r in reqs:
            s.add(r)
        torch.cuda.synchronize()
        t0, steps = time.perf_counter(), 0
        while s.has_work:
            s.step()
            steps += 1
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens = sum(len(r.output_ids) for r in reqs)
        result.update({f"seqs{n}_tok_s": tokens / dt, f"seqs{n}_steps": steps, f"seqs{n}_s": dt,
                       f"seqs{n}_preemptions": s.num_preemptions})
    result["static_batching_steps"] = max(m for _, m in specs)
    result["speedup"] = result["seqs32_tok_s"] / result["seqs1_tok_s"]
    record_bench("day_49_scheduler_smollm2", result)
    assert result["speedup"] >= 3, f"32 rows per step make {result['speedup']:.1f}x the tokens/s of one at a time"
