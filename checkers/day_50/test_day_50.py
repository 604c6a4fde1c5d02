"""Day 50 checker: the PrefixCache. Run: pytest checkers/day_50

The oracle for "outputs unchanged" is a model KV pool: the KV of position p is, exactly, a
function of tokens 0..p, so every slot holds the tuple of tokens up to its position. A prefill
writes only the positions past the cached ones (after the pending copies are made), a decode
writes its one token. Whatever your cache shares, every live sequence must read, at each of its
positions, the prefix it really has; a block shared by mistake (a collision, a stale hit, a
write into a cached block) shows up as a wrong tuple.

Scripted cases first (sharing, partial blocks, blocks kept after free, a fully cached prompt,
forced hash collisions, eviction order, errors), then seeded random scenarios over small
vocabularies (so prompts share prefixes all the time), in lockstep with the reference: after
every step the model pool, the ref counts, the free count, and the cached-token count (never a
prefix that was never written; exactly the prefixes written, while nothing was evicted).
"""
import random
import re

import pytest
import torch

from shared import reference
from shared.course.registry import Ops
from shared.engine.batch import BatchRunner
from shared.engine.errors import OutOfBlocksError
from shared.engine.sequence import SamplingParams
from shared.reference.scheduler import Request


# ---- helpers ------------------------------------------------------------------------------------
def one_line(exc):
    msg = str(exc)
    assert msg and "\n" not in msg, f"error messages are one line, got {msg!r}"
    return msg


def names(msg, *numbers):
    return all(re.search(rf"(?<![\d.]){n}(?![\d.])", msg) for n in numbers)


def snapshot(c, seqs):
    """Everything a failing call must leave unchanged, read through the public API."""
    return {"tables": {s: c.block_table(s) for s in seqs}, "lengths": {s: c.length(s) for s in seqs},
            "ref_counts": list(c.ref_counts), "num_free": c.num_free, "cached": sorted(c.cached)}


class Pool:
    """The model KV pool: slot -> the tokens up to that position; a sequence's own token list."""

    def __init__(self, cache):
        self.c, self.slots, self.tokens = cache, {}, {}

    def copy(self, copies=None):
        bs = self.c.block_size
        for src, dst in self.c.take_copies() if copies is None else copies:
            for o in range(bs):
                if src * bs + o in self.slots:
                    self.slots[dst * bs + o] = self.slots[src * bs + o]
                else:
                    self.slots.pop(dst * bs + o, None)

    def prefill(self, seq, tokens):
        """allocate_prompt, the copies, then write the positions past the cached ones."""
        cached = self.c.allocate_prompt(seq, tokens)
        return self.finish_prefill(seq, tokens, cached, self.c.take_copies())

    def finish_prefill(self, seq, tokens, cached, copies):
        assert 0 <= cached <= len(tokens) and (cached < len(tokens) or not tokens), \
            f"allocate_prompt returned {cached} cached tokens for a prompt of {len(tokens)}: the last token is " \
            "always computed (its logits are the next token)"
        self.copy(copies)
        self.tokens[seq] = list(tokens)
        for p in range(cached, len(tokens)):
            self.slots[self.c.slot(seq, p)] = tuple(tokens[:p + 1])
        return cached

    def append(self, seq, token):
        s = self.c.append_slot(seq, token)
        self.copy()
        self.tokens[seq].append(token)
        self.slots[s] = tuple(self.tokens[seq])

    def check(self, what=""):
        for seq, toks in self.tokens.items():
            assert self.c.length(seq) == len(toks), f"{what}: sequence {seq!r} holds {self.c.length(seq)} tokens, " \
                                                    f"expected {len(toks)}"
            for p in range(len(toks)):
                got = self.slots.get(self.c.slot(seq, p))
                assert got == tuple(toks[:p + 1]), \
                    f"{what}: sequence {seq!r} position {p} reads KV of tokens {got}, expected {tuple(toks[:p + 1])} " \
                    "(a block shared that holds other tokens, or a cached block written over)"


def held(c, seqs):
    return {b for s in seqs for b in c.block_table(s)}


# ---- scripted cases -----------------------------------------------------------------------------
def test_a_shared_prefix_shares_its_full_blocks(day):
    c = day.PrefixCache(12, 4)
    m = Pool(c)
    a = list(range(11))                                # 4 + 4 + 3
    assert m.prefill("a", a) == 0, "nothing is cached in a new cache"
    assert c.num_cached_blocks == 2, f"a's 2 full blocks are cached, got {c.num_cached_blocks}"
    b = a[:8] + [50, 51, 52, 53, 54]                   # same first 2 blocks, then 5 other tokens
    cached = m.prefill("b", b)
    ta, tb = c.block_table("a"), c.block_table("b")
    assert cached == 8, f"b starts with a's 2 full blocks: 8 cached tokens, got {cached}"
    assert tb[:2] == ta[:2] and not set(tb[2:]) & set(ta), f"b shares exactly a's 2 full blocks: a {ta}, b {tb}"
    assert [c.ref_counts[x] for x in ta[:2]] == [2, 2], f"shared blocks have ref count 2, got {c.ref_counts}"
    assert c.num_free == 12 - 3 - 2, f"b took only its 2 other blocks: {12 - 5} free, got {c.num_free}"
    assert c.num_cached_blocks == 3, f"a's 2 full blocks and b's third are cached, got {c.num_cached_blocks}"
    m.check("after b")


def test_a_partial_block_is_never_shared(day):
    c = day.PrefixCache(8, 4)
    m = Pool(c)
    m.prefill("a", [1, 2, 3, 4, 5, 6])                 # block 1 holds 2 tokens
    assert c.num_cached_blocks == 1, "only full blocks are cached"
    cached = m.prefill("b", [1, 2, 3, 4, 5, 6, 7])
    assert cached == 4, f"a's second block is partly filled: b shares only the first, 4 tokens, got {cached}"
    assert c.block_table("b")[1] != c.block_table("a")[1]
    m.check()


def test_freed_blocks_stay_cached_and_are_found_again(day):
    c = day.PrefixCache(6, 2)
    m = Pool(c)
    a = [7, 8, 9, 10, 11]
    m.prefill("a", a)
    ta = c.block_table("a")
    c.free("a"); del m.tokens["a"]
    assert c.num_free == 6, f"freed blocks can all be taken again (free or evictable): 6, got {c.num_free}"
    assert c.num_cached_blocks == 2, f"a's 2 full blocks stay cached after free, got {c.num_cached_blocks}"
    assert list(c.ref_counts) == [0] * 6, f"no sequence holds a block: ref counts {c.ref_counts}"
    cached = m.prefill("b", a[:4] + [3, 3])
    assert cached == 4 and c.block_table("b")[:2] == ta[:2], \
        f"b finds a's 2 cached blocks {ta[:2]} after a was freed: cached {cached}, table {c.block_table('b')}"
    assert c.num_free == 6 - 3
    m.check()


def test_a_fully_cached_prompt_copies_its_last_block(day):
    """The last prompt token is always fed (its logits are the next token), so its KV is written
    again: into a copy of the shared last block, never into the block itself."""
    c = day.PrefixCache(5, 4)
    m = Pool(c)
    p = list(range(20, 28))                            # exactly 2 full blocks
    m.prefill("a", p)
    x, y = c.block_table("a")
    c.free("a"); del m.tokens["a"]                     # both blocks cached, held by nobody
    cached = c.allocate_prompt("b", p)
    assert cached == 7, f"every block of b's prompt is cached, but its last token is computed: 7, got {cached}"
    bx, by = c.block_table("b")
    assert bx == x and by not in (x, y), f"b shares a's first block and gets a fresh last one: a {[x, y]}, b {[bx, by]}"
    assert c.ref_counts[x] == 1 and c.ref_counts[by] == 1
    assert c.num_free == 5 - 3, "the copy's source is held until the copy is made: it is not free before take_copies"
    copies = c.take_copies()
    assert copies == [(y, by)], f"take_copies returns [(shared last block, its copy)] = {[(y, by)]}, got {copies}"
    assert c.num_free == 5 - 2 and c.ref_counts[y] == 0, "after take_copies the source is let go (evictable)"
    m.finish_prefill("b", p, cached, copies)
    m.check()
    c.free("b"); del m.tokens["b"]
    assert c.num_free == 5 and list(c.ref_counts) == [0] * 5, "every block free after freeing everything"
    assert m.prefill("d", p + [1]) == 8, "the copied block is still cached: all 8 tokens hit"
    m.check()


def test_an_empty_prompt(day):
    c = day.PrefixCache(3, 2)
    assert c.allocate_prompt("e", []) == 0 and c.block_table("e") == [] and c.num_free == 3


@pytest.mark.parametrize("seed", range(3))
def test_a_forced_collision_never_shares(day, seed):
    """Every block gets the same hash: only equal token ids after an equal prefix may share."""
    rng = random.Random(seed)
    c = day.PrefixCache(24, 3)
    c.hash_block = lambda parent_hash, token_ids: 12345
    m = Pool(c)
    m.prefill("a", [rng.randrange(5) for _ in range(9)])
    cached = m.prefill("b", [9, 9, 9] + m.tokens["a"][3:])    # another first block, then a's blocks
    assert cached == 0, f"b's first block differs from a's: nothing may be shared despite equal hashes, got {cached}"
    assert not set(c.block_table("b")) & set(c.block_table("a")), "a colliding hash shared a block"
    m.check("colliding hashes")


def test_a_collision_in_the_parent_chain_never_shares(day):
    """A hash that ignores the parent: the same block after another prefix collides. Equal token ids
    in the block are not enough -- its KV depends on every token before it."""
    c = day.PrefixCache(16, 2)
    c.hash_block = lambda parent_hash, token_ids: hash(token_ids)
    m = Pool(c)
    m.prefill("a", [1, 2, 3, 4, 5])                            # caches [1, 2] then [3, 4] after it
    m.prefill("b", [9, 9, 8])                                  # caches [9, 9]
    cached = m.prefill("c", [9, 9, 3, 4, 5])                   # [9, 9] hits; a's [3, 4] follows [1, 2]
    assert cached == 2, f"c shares b's block [9, 9], but not a's [3, 4], which follows [1, 2]: 2, got {cached}"
    m.check("a chain collision")
    assert m.prefill("d", [1, 2, 3, 4, 6]) == 4, "the same prefix still shares under this hash"
    m.check()


def test_eviction_waits_for_the_free_list_and_goes_least_recently_used(day):
    c = day.PrefixCache(8, 2)
    m = Pool(c)
    a = [1, 1, 2, 2, 3, 3, 4, 4]
    m.prefill("a", a)
    ta = c.block_table("a")
    c.free("a"); del m.tokens["a"]
    m.prefill("b", [5, 5, 6, 6, 7, 7, 8, 8])             # the 4 blocks never cached: a's stay
    tb = c.block_table("b")
    assert not set(tb) & set(ta), f"b took a cached block while uncached ones were free: a {ta}, b {tb}"
    assert all(x in c.cached for x in ta), "a cached block was evicted while the free list had blocks"
    c.free("b"); del m.tokens["b"]                       # now a's blocks are the least recently used
    m.prefill("d", [9, 9, 9, 9])                         # 2 blocks: the pool must evict 2
    assert c.num_cached_blocks == 8 - 2 + 2, f"2 evicted, d's 2 cached: 8, got {c.num_cached_blocks}"
    kept = sorted(e.token_ids for e in c.cached.values())
    want = [(1, 1), (2, 2), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9), (9, 9)]
    assert kept == want, f"evict least recently used first (a before b), and of one sequence its last blocks " \
                         f"first (a later block is no use without the ones before it): cached {kept}, expected {want}"
    m.check()
    assert m.prefill("e", a) == 4, "a's first 2 blocks still hit after the eviction"
    m.check()


def test_truncate_then_a_different_token_keeps_every_sequence_right(day):
    c = day.PrefixCache(10, 4)
    m = Pool(c)
    p = [3, 1, 4, 1, 5, 9, 2, 6]
    m.prefill("a", p)
    m.prefill("s", p + [5])                             # shares both of a's blocks
    c.free("a"); del m.tokens["a"]
    c.truncate("s", 6); m.tokens["s"] = m.tokens["s"][:6]
    m.append("s", 7)                                    # position 6: a cached block would be written
    m.check("after truncate and append")
    m.prefill("b", p + [1])                             # must read the original KV of p, wherever it is
    m.check("a prompt of the original tokens after the truncate")


def test_decode_fills_blocks_that_are_cached(day):
    c = day.PrefixCache(10, 3)
    m = Pool(c)
    m.prefill("a", [1, 2])
    for t in (3, 4, 5, 6):
        m.append("a", t)
    assert c.num_cached_blocks == 2, f"the 2 blocks that decode filled are cached, got {c.num_cached_blocks}"
    assert m.prefill("b", [1, 2, 3, 4, 5, 6, 0]) == 6, "a prompt equal to a's tokens so far hits both blocks"
    m.check()


def test_misuse_and_out_of_blocks_change_nothing(day):
    c = day.PrefixCache(3, 2)
    m = Pool(c)
    m.prefill("a", [1, 2, 3, 4])
    c.free("a"); del m.tokens["a"]                       # 2 evictable, 1 free
    m.prefill("x", [])
    before = snapshot(c, ["x"])
    with pytest.raises(OutOfBlocksError) as e:
        c.allocate_prompt("b", [1, 2, 3, 4, 5, 6, 7, 8])  # 2 hits + 2 new, but the hits are 2 of the 3 takeable
    assert names(one_line(e.value), 2, 1), f"say 2 blocks were asked for and 1 is free: {e.value}"
    assert snapshot(c, ["x"]) == before, "a failed allocate_prompt changed the cache"
    with pytest.raises(ValueError):
        c.length("b")
    with pytest.raises(ValueError) as e:
        c.allocate_prompt("x", [1])
    one_line(e.value)
    assert snapshot(c, ["x"]) == before, "a refused allocate_prompt changed the cache"
    assert m.prefill("c", [1, 2, 3, 4, 5]) == 4, "the cached blocks survived the failed calls"
    m.check()


def test_builds_on_the_block_allocator(day):
    c = day.PrefixCache(4, 2)
    assert any(k.__name__ == "BlockAllocator" for k in type(c).__mro__), \
        "PrefixCache extends day 28's BlockAllocator (ref counts, fork, copy on write are reused)"
    c.allocate("plain", 3)                               # day 28's allocate: no token ids, nothing cached
    assert c.num_cached_blocks == 0 and c.num_free == 2


# ---- random scenarios, in lockstep with the reference -------------------------------------------
def serials(ref):
    """The reference's cached blocks, by their never-reused serials: one that disappears was evicted."""
    return {e.serial for e in ref.cached.values()}


def run_scenario(day, seed):
    rng = random.Random(seed)
    bs, nb, vocab = rng.choice([1, 2, 3, 4]), rng.randrange(4, 20), rng.choice([2, 3])
    c, ref = day.PrefixCache(nb, bs), reference.PrefixCache(nb, bs)
    m = Pool(c)
    written = set()          # every full-block prefix whose KV was ever written: what a hit may claim
    evicted = False
    live, nxt = [], 0
    for step in range(60):
        what = f"seed {seed} (block_size {bs}, {nb} blocks) step {step}"
        op = rng.random()
        if op < 0.4 or not live:
            base = list(rng.choice(list(m.tokens.values()) or [[]]))[:rng.randrange(0, 3 * bs + 2)]
            prompt = base + [rng.randrange(vocab) for _ in range(rng.randrange(0 if base else 1, 2 * bs + 2))]
            seq, nxt = nxt, nxt + 1
            old = serials(ref)
            try:
                want = ref.allocate_prompt(seq, prompt)
            except OutOfBlocksError:
                before = snapshot(c, live)
                with pytest.raises(OutOfBlocksError):
                    c.allocate_prompt(seq, prompt)
                    pytest.fail(f"{what}: the reference ran out of blocks for a prompt of {len(prompt)} tokens")
                assert snapshot(c, live) == before, f"{what}: a failed allocate_prompt changed the cache"
                continue
            ref.take_copies()
            evicted |= bool(old - serials(ref))
            got = m.prefill(seq, prompt)
            k = 0
            while k + bs <= len(prompt) and tuple(prompt[:k + bs]) in written:
                k += bs
            assert got <= k, f"{what}: {got} tokens reported cached, but only the first {k} were ever written"
            assert got == want, f"{what}: {got} cached tokens for a prompt of {len(prompt)}, the reference finds {want}"
            live.append(seq)
        elif op < 0.7:
            seq, t, old = rng.choice(live), rng.randrange(vocab), serials(ref)
            try:
                ref.append_slot(seq, t)
            except OutOfBlocksError:
                with pytest.raises(OutOfBlocksError):
                    c.append_slot(seq, t)
                continue
            ref.take_copies()
            evicted |= bool(old - serials(ref))
            m.append(seq, t)
        elif op < 0.8:
            seq = rng.choice(live)
            n = rng.randrange(0, c.length(seq) + 1)
            c.truncate(seq, n); ref.truncate(seq, n)
            m.tokens[seq] = m.tokens[seq][:n]
        elif op < 0.87:
            parent, child = rng.choice(live), nxt
            nxt += 1
            c.fork(parent, child); ref.fork(parent, child)
            m.tokens[child] = list(m.tokens[parent])
            live.append(child)
        else:
            seq = live.pop(rng.randrange(len(live)))
            c.free(seq); ref.free(seq)
            del m.tokens[seq]
        for toks in m.tokens.values():
            written.update(tuple(toks[:i]) for i in range(bs, len(toks) + 1, bs))
        m.check(what)
        counts = [0] * nb
        for b in (b for s in live for b in c.block_table(s)):
            counts[b] += 1
        assert list(c.ref_counts) == counts, f"{what}: ref counts {list(c.ref_counts)}, tables hold {counts}"
        assert c.num_free == nb - len(held(c, live)) == ref.num_free, \
            f"{what}: num_free {c.num_free}: {nb} blocks - {len(held(c, live))} held (free and evictable both count)"
        assert c.num_cached_blocks == ref.num_cached_blocks, \
            f"{what}: {c.num_cached_blocks} cached blocks, the reference has {ref.num_cached_blocks}"
    return evicted


def test_random_scenarios_in_lockstep(day):
    evicted = [run_scenario(day, seed) for seed in range(40)]
    assert any(evicted) and not all(evicted), "the scenarios cover pools that evict and pools that do not"


# ---- the tiny model through day 48's BatchRunner with the prefix cache on ------------------------------
@pytest.fixture(scope="module")
def table(sizes):
    """In the simulator: reference kernels (a simulated GEMV of every weight takes minutes). On a GPU:
    every component from the track."""
    return sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})


@pytest.fixture(scope="module")
def weights(tiny_model, device):
    w = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return w


def runners(day, ops, table, weights, device, num_blocks):
    """The same model without and with your PrefixCache as the pool's allocator."""
    bops = Ops(ops.track, overrides={**table, "PrefixCache": day.PrefixCache})
    make = lambda on: BatchRunner(bops, weights, device, torch.float32, num_blocks=num_blocks, block_size=4,
                                  max_batch=4, prefix_cache=on)
    return make(False), make(True)


def test_tiny_model_prefill_logits_unchanged(day, ops, table, weights, device):
    """A prompt prefilled after its prefix was cached (partly, and to its last token) gives the
    logits of a prefill from scratch."""
    off, on = runners(day, ops, table, weights, device, 16)
    rng = random.Random(50)
    V = weights.config.vocab_size
    system = [rng.randrange(3, V) for _ in range(8)]             # 2 full blocks of 4
    for i, p in enumerate([system + [5, 6, 7, 8], system + [9], system, system + [5, 6, 7, 8, 1]]):
        want = off.prefill(i, p)
        got = on.prefill(i, p)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), \
            f"prompt {i} ({len(p)} tokens): prefill logits with the prefix cache differ by " \
            f"{float((got - want).abs().max()):.2e} from a prefill from scratch"
    assert on.cached_tokens == 0 + 8 + 7 + 12, \
        f"cached prompt tokens: 0, then 8 (the 2 system blocks), 7 (all of them but the last token), 12 " \
        f"(the first prompt's 3 blocks), got {on.cached_tokens}"


def test_tiny_model_prefill_many_shares_a_prefix_new_to_the_pool(day, ops, table, weights, device):
    """prefill_many with the prefix cache (what day 49's _admit calls): prompts sharing a system
    prompt that is NOT cached yet, in one call, give the logits of each prompt from scratch; the
    first computes the shared blocks, the others hit them in a second forward (two forwards for
    the call, not one per prompt); a refused call changes nothing."""
    off, on = runners(day, ops, table, weights, device, 24)
    rng = random.Random(5001)
    V = weights.config.vocab_size
    system = [rng.randrange(3, V) for _ in range(8)]             # 2 full blocks of 4
    prompts = [system + [5, 6, 7, 8], [9, 8, 7], system + [1], system, system + [5, 6, 7, 8, 3]]
    forwards, inner = [], on.ops.forward
    on.ops._cache["forward"] = lambda *a, **k: forwards.append(1) or inner(*a, **k)
    try:
        got = on.prefill_many(list(enumerate(prompts)))
    finally:
        on.ops._cache["forward"] = inner
    assert tuple(got.shape) == (len(prompts), V)
    for i, p in enumerate(prompts):
        want = off.prefill(i, p)
        assert torch.allclose(got[i], want, atol=1e-4, rtol=1e-4), \
            f"prompt {i} ({len(p)} tokens) in one prefill_many with the prefix cache differs by " \
            f"{float((got[i] - want).abs().max()):.2e} from a prefill from scratch"
    assert len(forwards) == 2, f"{len(forwards)} forwards: the prompts new to the pool run as one, the hits as a second"
    assert on.cached_tokens == 8 + 7 + 12, \
        f"cached prompt tokens: 8 (the system blocks), 7 (all but the last token), 12 (prompt 0's 3 blocks), got {on.cached_tokens}"
    ids, nxt = [0, 2, 3, 4], [rng.randrange(3, V) for _ in range(4)]       # the KV of the hits: the next step
    torch.testing.assert_close(on.decode(ids, nxt), off.decode(ids, nxt), rtol=1e-4, atol=1e-4)
    free = on.num_free
    with pytest.raises(OutOfBlocksError):
        on.prefill_many([("a", system + [1] * 30), ("b", system + [2] * 30)])
    with pytest.raises(ValueError):
        on.prefill_many([("a", [5, 6]), (0, [7])])               # sequence 0 is held already
    assert on.num_free == free and on.cached_tokens == 27, "a refused prefill_many must change nothing"


def test_tiny_model_outputs_unchanged_with_the_prefix_cache(day, ops, table, weights, device):
    """Requests sharing a system prompt, through day 49's scheduler (the reference), in a pool small
    enough to preempt (a preempted request's recompute hits its own blocks) and to evict: every
    request's greedy tokens equal those without the cache."""
    rng = random.Random(500)
    V = weights.config.vocab_size
    system = [rng.randrange(3, V) for _ in range(9)]
    prompts = [system + [rng.randrange(3, V) for _ in range(rng.randrange(0, 9))] for _ in range(6)]
    prompts += [prompts[1], system[:8]]                          # a repeat, a prompt of cached blocks only
    lens = [rng.randrange(6, 14) for _ in prompts]
    off, on = runners(day, ops, table, weights, device, 10)
    outs = []
    for runner in (off, on):
        s = reference.Scheduler(runner, max_num_seqs=3)
        reqs = [Request(i, p, SamplingParams(max_tokens=n), ()) for i, (p, n) in enumerate(zip(prompts, lens))]
        for r in reqs:
            s.add(r)
        while s.has_work:
            s.step()
        outs.append([r.output_ids for r in reqs])
    assert s.num_preemptions >= 1, "10 blocks of 4 for these requests must preempt"
    assert outs[1] == outs[0], f"with the prefix cache: {outs[1]}, without: {outs[0]}"
    assert on.cached_tokens >= 8 * (len(prompts) - 3), \
        f"requests after the first ones share the system prompt's 2 full blocks: {on.cached_tokens} tokens cached"
    assert on.num_free == 10, f"{10 - on.num_free} blocks still held after every request finished"
