"""Day 31 checker: PagedCache -- the engine's paged KV cache backend. Run: pytest checkers/day_31

Sim tier: your PagedCache with the reference kernels (fast in the simulator) and the track's
BlockAllocator: the step metadata prepare() writes, generation == the static cache token for
token (block sizes 1, 16 and one that divides nothing; blocks scattered over the pool; a chunked
prefill), copy on write, no leak, a decode step with no host reads, a full pool that changes
nothing, rollback (day 35). GPU: the track's kernels, CUDA graphs (graph == eager), no sync, and a
speed ratio.
"""
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from shared import REPO, reference
from shared.course.registry import Ops
from shared.course.testing import assert_close, no_host_reads, poison_, randn, record_bench
from shared.engine.attention import StaticCache
from shared.engine.errors import OutOfBlocksError
from shared.engine.runner import ModelRunner


@pytest.fixture(scope="module")
def paged_ops(day, ops, sizes):
    """In the simulator: reference kernels (a simulated GEMV of every weight takes minutes), the
    track's BlockAllocator, YOUR PagedCache. On a GPU: every component from the track."""
    table = sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})
    table.update(PagedCache=day.PagedCache, BlockAllocator=ops.BlockAllocator)
    return Ops(ops.track, overrides=table)


@pytest.fixture(scope="module")
def weights(tiny_model, device):
    w = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return w


def _config(layers=3, kv=2, hd=5):
    return SimpleNamespace(num_layers=layers, num_kv_heads=kv, head_dim=hd)


def _expected_slots(table, bs, start, T):
    """Position p lives in block table[p // bs] at offset p % bs."""
    return [table[p // bs] * bs + p % bs for p in range(start, start + T)]


# ---- the backend's state -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pools_and_buffers(day, paged_ops, device, dtype):
    cache = day.PagedCache(paged_ops, _config(), 7, 4, dtype, device)
    for name in ("k", "v"):
        t = getattr(cache, name)
        assert tuple(t.shape) == (3, 7, 2, 4, 5), \
            f"PagedCache.{name} must be [layers, num_blocks, kv_heads, block_size, head_dim] = (3, 7, 2, 4, 5), " \
            f"got {tuple(t.shape)}"
        assert t.dtype == dtype and t.device.type == torch.device(device).type, f"PagedCache.{name}: {t.dtype} on {t.device}"
    assert cache.k.data_ptr() != cache.v.data_ptr(), "k and v pools must be separate tensors"
    assert (cache.num_blocks, cache.block_size, cache.max_len) == (7, 4, 28), \
        "num_blocks, block_size and max_len = num_blocks * block_size"
    for name, shape in (("slot_mapping", (28,)), ("block_tables", (1, 7)), ("context_lens", (1,))):
        t = getattr(cache, name)
        assert tuple(t.shape) == shape and t.dtype == torch.int32, \
            f"PagedCache.{name}: int32 {shape} expected, got {t.dtype} {tuple(t.shape)}"
        assert t.device.type == torch.device(device).type, f"PagedCache.{name} must live on the device"
    assert cache.allocator.num_free == 7, "a new cache's allocator has every block free"


def test_prepare_writes_the_step_metadata_into_fixed_buffers(day, paged_ops, device):
    """Prefill, decode steps across block boundaries, a chunk, a new sequence: after each prepare
    the buffers hold what the allocator's table says, and they never move (a graph reads them)."""
    bs, nb = 3, 12
    cache = day.PagedCache(paged_ops, _config(), nb, bs, torch.float32, device)
    a = cache.allocator
    ptrs = [t.data_ptr() for t in (cache.slot_mapping, cache.block_tables, cache.context_lens)]

    def check(start, T, what):
        assert a.length(0) >= start + T, f"after {what}: sequence 0 holds {a.length(0)} tokens, needs {start + T}"
        table = a.block_table(0)
        want = _expected_slots(table, bs, start, T)
        assert cache.slot_mapping[:T].tolist() == want, \
            f"slot_mapping[:{T}] after {what}: {cache.slot_mapping[:T].tolist()}, expected {want} (table {table})"
        n = -(-(start + T) // bs)
        assert cache.block_tables[0, :n].tolist() == table[:n], \
            f"block_tables[0, :{n}] after {what}: {cache.block_tables[0, :n].tolist()}, expected {table[:n]}"
        assert cache.context_lens.tolist() == [start + T], \
            f"context_lens after {what}: {cache.context_lens.tolist()}, expected [{start + T}]"
        assert [t.data_ptr() for t in (cache.slot_mapping, cache.block_tables, cache.context_lens)] == ptrs, \
            f"after {what}: a buffer moved -- allocate them once and write into them (fill_/copy_)"

    cache.prepare(0, 5)
    check(0, 5, "prepare(0, 5)")
    a.allocate("decoy", 4)                          # another sequence takes the next blocks
    for p in (5, 6, 7):
        cache.prepare(p, 1)
        check(p, 1, f"decode prepare({p}, 1)")
    assert a.block_table(0)[2] != a.block_table(0)[1] + 1, "test setup: the third block should not follow the second"
    cache.prepare(8, 5)
    check(8, 5, "a chunk prepare(8, 5) after 8 cached tokens")
    cache.prepare(12, 1)
    check(12, 1, "prepare(12, 1): the same step again (its slot is kept)")
    assert a.length(0) == 13, f"a step run again must not grow the sequence: length {a.length(0)}, expected 13"
    used = nb - a.num_free
    cache.prepare(0, 2)
    check(0, 2, "prepare(0, 2): a new sequence")
    assert a.length(0) == 2 and nb - a.num_free == used - 5 + 1, \
        f"prepare(0, T) must free the previous sequence's blocks first: {nb - a.num_free} blocks in use"
    cache.release()
    assert a.num_free == nb - 2, f"release() must free sequence 0's blocks ({a.num_free} free, expected {nb - 2})"
    with pytest.raises(ValueError):
        cache.prepare(3, 1)                          # nothing cached: a step cannot start at 3


# ---- generation: paged == static ---------------------------------------------------------------------------
def _static_runner(ops, w, max_len, device):
    return ModelRunner(ops, w, StaticCache(ops, w.config, max_len, torch.float32, device), device)


def _paged_runner(day, ops, w, device, num_blocks, block_size):
    cache = day.PagedCache(ops, w.config, num_blocks, block_size, torch.float32, device)
    poison_(cache.k), poison_(cache.v)              # a slot read before it was written shows as NaN
    return ModelRunner(ops, w, cache, device)


def _greedy(next_logits, prompt, n):
    steps = []

    def remember(logits):
        steps.append(logits.float().cpu())
        return reference.sample(logits)

    return list(reference.generate(next_logits, prompt, max_new_tokens=n, sample=remember)), steps


def _scattering(runner, next_logits):
    """next_logits that lets another sequence take a block before every other step, so sequence
    0's blocks are scattered over the pool (position p is NOT at slot p)."""
    calls = [0]

    def wrapped(ids):
        calls[0] += 1
        if calls[0] % 2:
            runner.backend.allocator.allocate(f"other{calls[0]}", 1)
        return next_logits(ids)
    return wrapped


PROMPT = [72, 101, 108, 108, 111, 44, 32, 112, 97, 103, 101, 100, 33]   # 13 tokens


@pytest.mark.parametrize("block_size", [1, 16, 5])
def test_paged_generation_equals_static(day, paged_ops, weights, device, sizes, block_size):
    """Greedy tokens and every step's logits, block sizes 1, 16 and 5 (13 = 2*5 + 3)."""
    n = sizes(tiny=10, real=40)
    static = _static_runner(paged_ops, weights, len(PROMPT) + n, device)
    want, want_logits = _greedy(static.next_logits, PROMPT, n)
    blocks = 2 * -(-(len(PROMPT) + n) // block_size) + n
    paged = _paged_runner(day, paged_ops, weights, device, blocks, block_size)
    got, got_logits = _greedy(_scattering(paged, paged.next_logits), PROMPT, n)
    for i, (a, b) in enumerate(zip(got_logits, want_logits)):
        assert_close(a, b, f"logits of new token {i}, paged (block_size {block_size}) vs static", atol=1e-4, rtol=1e-4)
    assert got == want, f"paged greedy tokens {got} != static {want} (block_size {block_size})"
    table = paged.backend.allocator.block_table(0)
    assert table != list(range(table[0], table[0] + len(table))) or len(table) == 1, \
        "test setup: sequence 0's blocks should be scattered"


def test_chunked_prefill_equals_static(day, paged_ops, weights, device):
    """A prompt fed in two chunks (6 tokens, then 7 more that start mid-block): the second chunk
    attends over the cached tokens too, gathered from the blocks."""
    def run(runner, nl):
        first = nl(PROMPT[:6])
        second = nl(PROMPT)
        ids = PROMPT + [int(torch.argmax(second))]
        return [first, second, nl(ids)]
    static = _static_runner(paged_ops, weights, 32, device)
    paged = _paged_runner(day, paged_ops, weights, device, 16, 4)
    want = run(static, static.next_logits)
    got = run(paged, _scattering(paged, paged.next_logits))
    for what, a, b in zip(("the first chunk", "the second chunk (7 tokens after 6 cached)", "the decode step after"),
                          got, want):
        assert_close(a, b, f"logits after {what}, paged vs static", atol=1e-4, rtol=1e-4)


def test_decode_step_reads_nothing_back_to_the_host(day, paged_ops, weights, device):
    """What a CUDA graph capture forbids: prepare() and the step with every host read made to raise."""
    runner = _paged_runner(day, paged_ops, weights, device, 8, 4)
    static = _static_runner(paged_ops, weights, 32, device)
    ids = list(PROMPT[:7])
    for step in range(4):
        want = static.next_logits(ids)
        if step == 0:
            got = runner.next_logits(ids)
        else:
            with no_host_reads():
                got = runner.next_logits(ids)
        assert_close(got, want, f"logits at step {step}", atol=1e-4, rtol=1e-4)
        ids.append(int(torch.argmax(want)))


def test_copy_on_write_copies_the_shared_block(day, paged_ops, device):
    """Another sequence forks sequence 0 (shares its blocks); the next write into the shared last
    block must go to a copy, which prepare() makes in every layer of both pools."""
    hd = 16                     # a head dim the flash kernels of days 25-26 support
    cfg = _config(layers=2, kv=2, hd=hd)
    bs = 4
    cache = day.PagedCache(paged_ops, cfg, 6, bs, torch.float32, device)
    cache.prepare(0, 6)
    H = 4
    for layer in range(cfg.num_layers):
        q = randn(6, H, hd, device=device, seed=layer)
        cache(layer, q, randn(6, 2, hd, device=device, seed=10 + layer), randn(6, 2, hd, device=device, seed=20 + layer),
              torch.arange(6, dtype=torch.int32, device=device))
    a = cache.allocator
    a.fork(0, "child")
    child = a.block_table("child")
    before_k, before_v = cache.k[:, child].clone(), cache.v[:, child].clone()
    cache.prepare(6, 1)
    table = a.block_table(0)
    assert table[0] == child[0] and table[1] != child[1], "test setup: the shared last block should be copied"
    assert cache.block_tables[0, :2].tolist() == table, \
        f"block_tables[0] after a copy on write: {cache.block_tables[0, :2].tolist()}, expected {table}"
    for layer in range(cfg.num_layers):
        k1, v1 = randn(1, 2, hd, device=device, seed=30 + layer), randn(1, 2, hd, device=device, seed=40 + layer)
        q1 = randn(1, H, hd, device=device, seed=50 + layer)
        out = cache(layer, q1, k1, v1, torch.tensor([6], dtype=torch.int32, device=device))
        keys = torch.cat([before_k[layer, 0].transpose(0, 1), before_k[layer, 1, :, :2].transpose(0, 1), k1])
        values = torch.cat([before_v[layer, 0].transpose(0, 1), before_v[layer, 1, :, :2].transpose(0, 1), v1])
        assert_close(out, reference.attention(q1, keys, values),
                     f"decode attention after the copy on write (layer {layer}): over positions 0..6", atol=1e-5, rtol=1e-5)
        for name, pool, before, new in (("k", cache.k, before_k, k1), ("v", cache.v, before_v, v1)):
            assert_close(pool[layer, child], before[layer], f"the forked sequence's {name} blocks (layer {layer})",
                         atol=0, rtol=0)
            assert_close(pool[layer, table[1], :, :2], before[layer, 1, :, :2],
                         f"positions 4, 5 in the copied block ({name}, layer {layer}): copy before writing",
                         atol=0, rtol=0)
            assert_close(pool[layer, table[1], :, 2], new[0], f"the new token in the copied block ({name})",
                         atol=0, rtol=0)


# ---- rollback (day 35's speculative decoding) ----------------------------------------------------------------
def test_rollback_gives_back_the_blocks_past_the_length(day, paged_ops, weights, device):
    """A verify writes 7 tokens after the prompt, then rollback(L) keeps L of them: the allocator
    holds blocks_needed(L) blocks (ref count 1), the others are free again, context_lens is L, and
    decoding on from L equals the static cache fed only the kept tokens. L inside a block, at a
    block boundary, the length itself (nothing changes), and a bad L (one line, nothing changes)."""
    bs, nb = 4, 12
    for keep in (2, 3, 7):                           # prompt 13 + keep: 15 (inside a block), 16 (a boundary), 20
        runner = _paged_runner(day, paged_ops, weights, device, nb, bs)
        cache, a = runner.backend, runner.backend.allocator
        static = _static_runner(paged_ops, weights, 40, device)
        first = int(torch.argmax(runner.next_logits(PROMPT)))
        a.allocate("other", 1)                       # the verify's blocks do not follow the prompt's
        drafts = [first] + [(7 * i + 3) % weights.config.vocab_size for i in range(6)]
        runner.forward(drafts, len(PROMPT))
        held = a.length(0)
        L = len(PROMPT) + keep
        assert held == len(PROMPT) + 7, f"test setup: the cache should hold {len(PROMPT) + 7} tokens, holds {held}"
        cache.rollback(L)
        runner.cached = L
        table = a.block_table(0)
        what = f"rollback({L}) of {held} tokens (block size {bs})"
        assert a.length(0) == L and len(table) == -(-L // bs), \
            f"{what}: sequence 0 must hold {L} tokens in {-(-L // bs)} blocks, holds {a.length(0)} in {table}"
        assert a.num_free == nb - len(table) - 1, \
            f"{what}: {a.num_free} blocks free, expected {nb - len(table) - 1} -- give the blocks past L back " \
            "(allocator.truncate)"
        assert all(a.ref_counts[b] == 1 for b in table), f"{what}: ref counts of the kept blocks {a.ref_counts}"
        assert cache.context_lens.tolist() == [L], f"{what}: context_lens {cache.context_lens.tolist()}, expected [{L}]"
        cache.rollback(L)
        assert (a.length(0), a.block_table(0)) == (L, table), f"rollback({L}) again must change nothing"
        for bad in (L + 1, -1):
            with pytest.raises(ValueError) as e:
                cache.rollback(bad)
                pytest.fail(f"rollback({bad}) of a sequence of {L} tokens must raise ValueError")
            assert "\n" not in str(e.value), f"one line, please: {e.value}"
            assert (a.length(0), a.block_table(0)) == (L, table), f"a failed rollback({bad}) changed the sequence"
        ids = PROMPT + drafts[:keep]
        ids = ids + [int(torch.argmax(static.next_logits(ids)))]   # the token after the kept ones, not cached
        for step in range(5):                        # decoding on: the kept slots, then new blocks
            want = static.next_logits(ids)
            assert_close(runner.next_logits(ids), want, f"decode step {step} after {what}", atol=1e-4, rtol=1e-4)
            ids = ids + [int(torch.argmax(want))]
        runner.release()
        assert a.num_free == nb - 1, f"after {what} and release(): {a.num_free} blocks free, expected {nb - 1}"
    with pytest.raises(ValueError):
        day.PagedCache(paged_ops, _config(), 4, 4, torch.float32, device).rollback(0)   # holds no sequence


# ---- a full pool -------------------------------------------------------------------------------------------
def test_out_of_blocks_changes_no_other_sequence(day, paged_ops, device):
    """Another sequence's KV is written with the allocator and paged_kv_write; sequence 0 (your
    cache) fills the rest of the pool, then asks for one more block. OutOfBlocksError, and every
    byte of the other sequence's KV, and its table, are as they were."""
    cfg, bs, nb = _config(layers=2, kv=2, hd=3), 4, 6
    cache = day.PagedCache(paged_ops, cfg, nb, bs, torch.float32, device)
    a = cache.allocator
    a.allocate("other", 7)                          # 2 blocks
    slots = torch.tensor(_expected_slots(a.block_table("other"), bs, 0, 7), dtype=torch.int32, device=device)
    for layer in range(cfg.num_layers):
        paged_ops.paged_kv_write(cache.k[layer], cache.v[layer], randn(7, 2, 3, device=device, seed=layer),
                                 randn(7, 2, 3, device=device, seed=9 + layer), slots)
    other_table = a.block_table("other")
    cache.prepare(0, 10)                            # 3 blocks: 1 free
    for p in range(10, 16):                         # fills the last block
        cache.prepare(p, 1)
    assert a.num_free == 0, f"test setup: the pool should be full, {a.num_free} blocks free"
    k_before, v_before = cache.k.clone(), cache.v.clone()
    with pytest.raises(OutOfBlocksError) as err:
        cache.prepare(16, 1)
    assert len(str(err.value).strip().splitlines()) == 1, f"one line, please: {err.value}"
    assert a.block_table("other") == other_table and a.length("other") == 7, "the other sequence's table changed"
    assert a.length(0) == 16, f"a failed step must leave sequence 0 as it was (length {a.length(0)}, expected 16)"
    assert_close(cache.k, k_before, "the k pool after a failed allocation", atol=0, rtol=0)
    assert_close(cache.v, v_before, "the v pool after a failed allocation", atol=0, rtol=0)
    with pytest.raises(OutOfBlocksError):
        cache.prepare(0, 40)                        # a prompt bigger than the pool
    assert a.block_table("other") == other_table, "the other sequence's table changed"
    assert a.num_free == nb - 2, f"{a.num_free} blocks free after a failed prompt: sequence 0's must be back"
    assert_close(cache.k, k_before, "the k pool after a failed prompt", atol=0, rtol=0)


def test_release_and_the_next_sequence_after_a_prompt_that_does_not_fit(day, paged_ops, device):
    """A prompt bigger than the pool: prepare(0, T) raises OutOfBlocksError, and the engine then
    calls release() (it always does when a generation ends). The failed prompt holds no blocks,
    release() is quiet (twice, too), and the next sequence prepares, steps and releases as usual:
    on a fresh cache and after a sequence that held blocks."""
    cfg, bs, nb = _config(layers=2, kv=2, hd=3), 4, 6
    for held_before in (False, True):
        cache = day.PagedCache(paged_ops, cfg, nb, bs, torch.float32, device)
        a = cache.allocator
        if held_before:
            cache.prepare(0, 5)
        with pytest.raises(OutOfBlocksError):
            cache.prepare(0, nb * bs + 1)
        what = "after a prompt that does not fit" + (" (a sequence held blocks before)" if held_before else "")
        assert a.num_free == nb, f"{what}: {a.num_free} of {nb} blocks free, expected all"
        try:
            cache.release()
            cache.release()
        except Exception as e:
            pytest.fail(f"release() {what} raised {type(e).__name__}: {e} -- a prompt that failed holds nothing")
        assert a.num_free == nb, f"release() {what}: {a.num_free} of {nb} blocks free"
        cache.prepare(0, 6)
        cache.prepare(6, 1)
        table = a.block_table(0)
        assert a.length(0) == 7 and cache.slot_mapping[:1].tolist() == _expected_slots(table, bs, 6, 1), \
            f"the next sequence {what}: length {a.length(0)}, slot {cache.slot_mapping[:1].tolist()}"
        assert cache.block_tables[0, :2].tolist() == table and cache.context_lens.tolist() == [7], \
            f"the next sequence {what}: block_tables {cache.block_tables[0, :2].tolist()} (table {table}), " \
            f"context_lens {cache.context_lens.tolist()}"
        cache.release()
        assert a.num_free == nb, f"the next sequence {what} leaked blocks: {a.num_free} of {nb} free"


@pytest.mark.parametrize("H, KV", [(8, 2), (12, 4)])
def test_query_heads_read_their_kv_head_in_every_path(day, paged_ops, device, H, KV):
    """Query head h attends with KV head h // (H // KV): the prompt, a chunk after cached tokens
    (gathered from the blocks), a decode step. 8/2 and 12/4: the group size H / KV differs from KV
    (the tiny model's 4/2 cannot tell the two apart)."""
    hd, bs = 16, 4                  # a head dim the flash kernels of days 25-26 support
    cache = day.PagedCache(paged_ops, _config(layers=1, kv=KV, hd=hd), 8, bs, torch.float32, device)
    keys, values = randn(12, KV, hd, device=device, seed=61), randn(12, KV, hd, device=device, seed=62)
    for start, T, what in ((0, 5, "the prompt"), (5, 6, "a chunk after 5 cached tokens"), (11, 1, "a decode step")):
        cache.prepare(start, T)
        q = randn(T, H, hd, device=device, seed=63 + start)
        out = cache(0, q, keys[start:start + T], values[start:start + T],
                    torch.arange(start, start + T, dtype=torch.int32, device=device))
        assert_close(out, reference.attention(q, keys[:start + T], values[:start + T]),
                     f"attention of {what}, H={H} KV={KV}", atol=1e-5, rtol=1e-5)


def _engine(day, model, track, sizes, dtype="fp32", **kw):
    """The engine with YOUR PagedCache (paged on whatever the track has finished); reference
    kernels in the simulator, the track's on a GPU."""
    from shared.engine import Engine
    e = Engine(str(model), track=track, dtype=dtype, paged=False, graphs=False, **kw)
    table = sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={})
    e.ops = Ops(track, overrides={**table, "PagedCache": day.PagedCache})
    e.use_cache = e.use_paged = True
    return e


def test_engine_reuses_blocks_after_each_sequence(day, tiny_model, track, sizes):
    """Three generations on one engine (and one stopped early): each equals the static cache's, and
    after each every block is free again -- no leak."""
    paged = _engine(day, tiny_model, track, sizes, block_size=4)
    static = _engine(day, tiny_model, track, sizes)
    static.use_paged = False
    assert "paged KV cache" in paged.describe(), paged.describe()
    for i, prompt in enumerate(["Paged", "a longer prompt than the first one", "x"]):
        ids = paged.prompt_ids(prompt)
        got = list(paged.generate_ids(ids, max_new_tokens=6, ignore_eos=True))
        assert got == list(static.generate_ids(ids, max_new_tokens=6, ignore_eos=True)), f"generation {i}: paged != static"
        backend = paged.runner(len(ids) + 6).backend
        assert isinstance(backend, day.PagedCache), "the engine must build your PagedCache"
        assert backend.allocator.num_free == backend.num_blocks, (
            f"after generation {i}: {backend.allocator.num_free} of {backend.num_blocks} blocks free -- release() "
            "must give the sequence's blocks back")
    it = paged.generate_ids(paged.prompt_ids("stopped early"), max_new_tokens=20, ignore_eos=True)
    next(it), next(it)
    it.close()
    assert backend.allocator.num_free == backend.num_blocks, "a generation closed early must free its blocks too"


def test_engine_out_of_blocks_is_one_line_that_names_the_knob(day, tiny_model, track, sizes):
    e = _engine(day, tiny_model, track, sizes, block_size=4, num_blocks=3)
    ids = list(range(65, 73))                       # 8 tokens + 20 new = 28 = 7 blocks of 4; the pool has 3
    with pytest.raises(OutOfBlocksError) as err:
        list(e.generate_ids(ids, max_new_tokens=20, ignore_eos=True))
    msg = str(err.value)
    assert len(msg.strip().splitlines()) == 1 and "num-blocks" in msg and "7 blocks" in msg, msg
    assert e.runner(8).backend.allocator.num_free == 3, "the failed sequence's blocks must go back to the pool"


def test_engine_generates_again_after_a_prompt_that_does_not_fit(day, tiny_model, track, sizes):
    """A 13-token prompt for a pool of 3 blocks of 4 fails at the prefill; the next request, which
    fits (4 + 6 tokens), must generate what the static cache does and give its blocks back."""
    e = _engine(day, tiny_model, track, sizes, block_size=4, num_blocks=3)
    static = _engine(day, tiny_model, track, sizes)
    static.use_paged = False
    with pytest.raises(OutOfBlocksError):
        list(e.generate_ids(PROMPT, max_new_tokens=2, ignore_eos=True))
    ids = PROMPT[:4]
    got = list(e.generate_ids(ids, max_new_tokens=6, ignore_eos=True))
    assert got == list(static.generate_ids(ids, max_new_tokens=6, ignore_eos=True)), \
        "after a prompt that did not fit, the next generation differs from the static cache's"
    assert e.runner(len(ids) + 6).backend.allocator.num_free == 3, "the next generation's blocks must go back"


def test_cli_prints_out_of_blocks_as_one_line_and_exits_2(tiny_model):
    """The engine's message as one line on stderr, exit code 2 (the solutions track: paged on)."""
    r = subprocess.run([sys.executable, "-m", "shared.cli", "generate", "Running out of blocks", "--model",
                        str(tiny_model), "--track", "solutions", "--block-size", "4", "--num-blocks", "6",
                        "--max-new-tokens", "40"], cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith("tinyinfer: error: out of KV blocks") and "--num-blocks" in lines[0], lines[0]
    assert "paged KV cache" in r.stderr, "generate prints what the engine runs on: the paged KV cache"


# ---- GPU: graphs, no sync, speed ----------------------------------------------------------------------
@pytest.mark.gpu
def test_decode_step_never_syncs_on_the_gpu(day, paged_ops, weights, device):
    runner = _paged_runner(day, paged_ops, weights, device, 8, 16)
    ids = list(PROMPT)
    ids.append(int(torch.argmax(runner.next_logits(ids))))
    runner.next_logits(ids)                          # compile outside the checked region
    ids.append(7)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = runner.next_logits(ids)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits).all()


PROMPTS = ["Deep learning is", "Écris un poème sur la mer 🌊 et le vent", "1, 2, 3, 4,"]


def _prompt_sets(engine):
    long = " ".join(["The history of computing is a story of layers built on layers."] * 60)
    sets = [engine.prompt_ids(p) for p in PROMPTS]
    sets.append(engine.prompt_ids("What is a KV cache?", chat=True))
    sets.append(engine.prompt_ids(long)[:min(600, engine.max_seq - 128)])
    return sets


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["tiny_model", pytest.param("smollm2", marks=pytest.mark.model)])
def test_paged_equals_static_and_graph_equals_eager(day, track, sizes, request, model):
    """fp32: paged == static token for token (64 tokens; different attention kernels, so logits
    only close). fp16: the paged decode step replayed from CUDA graphs == eager, 128 tokens."""
    path = request.getfixturevalue(model)
    paged, static = _engine(day, path, track, sizes), _engine(day, path, track, sizes)
    static.use_paged = False
    for ids in _prompt_sets(paged):
        a = list(static.generate_ids(ids, max_new_tokens=64, ignore_eos=True))
        b = list(paged.generate_ids(ids, max_new_tokens=64, ignore_eos=True))
        assert a == b, f"paged != static for a {len(ids)}-token prompt ({model}, fp32)"
    eager, graphed = _engine(day, path, track, sizes, dtype="fp16"), _engine(day, path, track, sizes, dtype="fp16")
    graphed.use_graphs = True
    for ids in _prompt_sets(eager):
        a = list(eager.generate_ids(ids, max_new_tokens=128, ignore_eos=True))
        b = list(graphed.generate_ids(ids, max_new_tokens=128, ignore_eos=True))
        assert a == b, f"paged: graph replay differs from eager for a {len(ids)}-token prompt ({model})"
        backend = graphed.runner(len(ids) + 128).backend
        assert backend.allocator.num_free == backend.num_blocks, "blocks leaked after a graphed generation"


def _decode_tok_s(engine, ids, n):
    list(engine.generate_ids(ids, max_new_tokens=8, ignore_eos=True))     # warm-up: compile, capture
    torch.cuda.synchronize()
    list(engine.generate_ids(ids, max_new_tokens=n, ignore_eos=True))
    return engine.stats.decode_tok_s


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_paged_vs_static_decode(day, smollm2, track, sizes):
    """The paged decode step (one more fill_ per step, a block table read on the device) should
    cost about what the static one does: target within 10% (recorded). It fails only below 0.5x,
    a sane floor for a same-run ratio: a step that syncs or rebuilds tensors lands there."""
    engines = {}
    for mode in ("static", "paged"):
        e = _engine(day, smollm2, track, sizes, dtype="fp16")
        e.use_paged, e.use_graphs = mode == "paged", True
        engines[mode] = e
    ids = engines["static"].prompt_ids("Deep learning is")
    ops = engines["paged"].ops
    result = {"model": "SmolLM2-135M", "dtype": "fp16", "gpu": torch.cuda.get_device_name(), "new_tokens": 128,
              "block_size": engines["paged"].block_size,
              **{f"{n}_from": ops.source(n).describe(track) for n in ("paged_kv_write", "paged_decode_attention",
                                                                        "decode_attention")}}
    for rep in range(2):                            # interleaved: both see the same clocks
        for mode, e in engines.items():
            result[f"{mode}_tok_s_{rep}"] = _decode_tok_s(e, ids, 128)
    static = max(result["static_tok_s_0"], result["static_tok_s_1"])
    paged = max(result["paged_tok_s_0"], result["paged_tok_s_1"])
    result.update(static_tok_s=static, paged_tok_s=paged, ratio=paged / static, target_ratio=0.9,
                  within_target=paged / static >= 0.9)
    record_bench("day_31_paged_vs_static_decode", result)
    assert result["ratio"] >= 0.5, (f"paged decode runs at {result['ratio']:.2f}x the static cache's speed "
                                    "(target 0.9x): is prepare() building tensors or reading the device each step?")
