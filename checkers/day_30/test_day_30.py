"""Day 30 checker: paged decode attention through block tables. Run: pytest checkers/day_30

Oracles: shared.reference.paged_decode_attention, and the contiguous decode attention of day 20's
contract on the blocks gathered back into one cache per sequence. The pool is poisoned (NaN)
everywhere no sequence owns, and past each sequence's length inside its last block; table
entries past a sequence's last block hold -1 or huge garbage: reading any of them shows. Also
checked: GQA groups whose size is not the number of KV heads, in a batch; no sequences, no blocks
and length 0 give written zeros.
"""
import gc

import pytest
import torch

from shared import reference
from shared.course.registry import day_module
from shared.course.testing import assert_close, graph_us, no_host_reads, randn, record_bench, tol
from shared.reference.paged import BlockAllocator

DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module")
def bs(sizes):
    """Threads per split block: few in the simulator (one OS thread each), the default on a GPU."""
    return sizes(tiny=32, real=128)


def _paged_case(lengths, H, KV, hd, kv_block, max_blocks, num_blocks, dtype, device, seed, unused="-1"):
    """q, pools, block tables from a BlockAllocator whose free list was shuffled (blocks are not
    contiguous, not in order), context_lens. Everything not holding a valid key is NaN."""
    g = torch.Generator().manual_seed(seed)
    alloc = BlockAllocator(num_blocks, kv_block)
    alloc.free_blocks = type(alloc.free_blocks)(torch.randperm(num_blocks, generator=g).tolist())
    q = randn(len(lengths), H, hd, dtype=dtype, device=device, seed=seed)
    k_pool = torch.full((num_blocks, KV, kv_block, hd), float("nan"), dtype=dtype)
    v_pool = torch.full_like(k_pool, float("nan"))
    tables = torch.full((len(lengths), max_blocks), -1, dtype=torch.int32)
    if unused == "garbage":
        tables.random_(10 ** 6, 2 ** 30, generator=g)
    for b, n in enumerate(lengths):
        row = alloc.allocate(b, n)
        tables[b, :len(row)] = torch.tensor(row, dtype=torch.int32)
        for p in range(n):
            blk, off = row[p // kv_block], p % kv_block
            k_pool[blk, :, off] = randn(KV, hd, dtype=dtype, seed=seed * 1000 + 2 * (b * 997 + p))
            v_pool[blk, :, off] = randn(KV, hd, dtype=dtype, seed=seed * 1000 + 2 * (b * 997 + p) + 1)
    lens = torch.tensor(lengths, dtype=torch.int32)
    return q, k_pool.to(device), v_pool.to(device), tables.to(device), lens.to(device)


def _gathered(q, k_pool, v_pool, tables, lens):
    """Contiguous decode attention per sequence on its blocks gathered in table order."""
    B, H, hd = q.shape
    kv_block = k_pool.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        n = int(lens[b])
        if n == 0:
            continue
        blocks = tables[b, :-(-n // kv_block)].long().cpu()
        kc = k_pool.cpu()[blocks].transpose(0, 1).reshape(k_pool.shape[1], -1, hd)
        vc = v_pool.cpu()[blocks].transpose(0, 1).reshape(k_pool.shape[1], -1, hd)
        out[b] = reference.decode_attention(q[b].cpu(), kc, vc, torch.tensor([n], dtype=torch.int32)).to(q.device)
    return out


def _check(day, case, what, dtype, **knobs):
    q, k_pool, v_pool, tables, lens = case
    out = day.paged_decode_attention(q, k_pool, v_pool, tables, lens, **knobs)
    assert out.dtype == q.dtype, f"output dtype {out.dtype}, expected q's dtype {q.dtype}"
    assert_close(out, reference.paged_decode_attention(q, k_pool, v_pool, tables, lens), what, **tol(dtype, 5))
    assert_close(out, _gathered(q, k_pool, v_pool, tables, lens),
                 f"{what} vs contiguous decode attention on the gathered blocks", **tol(dtype, 5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lengths_around_a_block_in_shuffled_blocks(day, sizes, device, bs, dtype):
    """Lengths 1, block-1, block, block+1 and long, in one batch, from a shuffled allocator."""
    kv_block = sizes(tiny=4, real=16)
    lengths = sizes(tiny=[1, 3, 4, 5, 19], real=[1, 15, 16, 17, 3001, 4096, 777, 2048])
    H, KV, hd, max_blocks, num_blocks = sizes(tiny=(4, 2, 16, 5, 32), real=(9, 3, 64, 256, 2048))
    case = _paged_case(lengths, H, KV, hd, kv_block, max_blocks, num_blocks, dtype, device, seed=1)
    for splits in sizes(tiny=[2], real=[0, 7]):
        _check(day, case, f"paged_decode_attention lengths {lengths} (block {kv_block}) splits={splits or 'auto'} "
               f"{dtype}", dtype, splits=splits, block_size=bs)


def test_length_zero_gives_zeros_and_unused_entries_are_never_read(day, sizes, device, bs):
    """A sequence with no keys gets zeros; table entries past a sequence's last block are garbage
    (huge block ids here): reading one is out of the pool or into a poisoned block."""
    kv_block = sizes(tiny=4, real=16)
    lengths = sizes(tiny=[0, 7, 2], real=[0, 100, 2, 1000])
    H, KV, hd, max_blocks, num_blocks = sizes(tiny=(2, 1, 16, 4, 12), real=(32, 8, 64, 64, 512))
    case = _paged_case(lengths, H, KV, hd, kv_block, max_blocks, num_blocks, torch.float32, device, seed=2,
                       unused="garbage")
    q, k_pool, v_pool, tables, lens = case
    out = day.paged_decode_attention(q, k_pool, v_pool, tables, lens, block_size=bs)
    assert_close(out[0], torch.zeros_like(out[0]), "paged_decode_attention of a sequence of length 0 (zeros)")
    _check(day, case, f"paged_decode_attention lengths {lengths}, garbage past each table's end", torch.float32,
           block_size=bs)


@pytest.mark.parametrize("knobs", [dict(splits=1), dict(splits=5, merge_block=32), dict(block_size=64)])
def test_any_knob_setting(day, sizes, device, bs, knobs):
    """One split per sequence is day 20 with a table; one KV block per split is all merge."""
    kv_block = sizes(tiny=4, real=16)
    lengths = sizes(tiny=[18, 9], real=[2000, 999, 1])
    H, KV, hd, max_blocks, num_blocks = sizes(tiny=(4, 2, 8, 5, 16), real=(9, 3, 64, 128, 600))
    knobs = dict(knobs, block_size=knobs.get("block_size", bs))
    case = _paged_case(lengths, H, KV, hd, kv_block, max_blocks, num_blocks, torch.float32, device, seed=3)
    _check(day, case, f"paged_decode_attention {knobs} lengths {lengths}", torch.float32, **knobs)


def test_every_warp_of_a_split_holds_keys(day, sizes, device):
    """A split longer than one warp's teams take per step: every warp of the block holds a state
    relative to its own maximum, and the block must merge them rescaled."""
    kv_block = sizes(tiny=4, real=16)
    H, KV, hd, max_blocks, num_blocks = sizes(tiny=(4, 2, 32, 10, 16), real=(9, 3, 64, 200, 256))
    lengths = sizes(tiny=[37, 2], real=[3000, 123])
    block = sizes(tiny=64, real=256)
    case = _paged_case(lengths, H, KV, hd, kv_block, max_blocks, num_blocks, torch.float32, device, seed=11)
    for splits in sizes(tiny=(1,), real=(1, 2)):
        _check(day, case, f"paged_decode_attention lengths {lengths} splits={splits} block_size={block} "
               "(every warp holds keys)", torch.float32, splits=splits, block_size=block)


def test_gqa_9_3_and_head_dim_not_a_multiple_of_8(day, sizes, device, bs):
    kv_block = sizes(tiny=2, real=16)
    H, KV, hd = sizes(tiny=(9, 3, 12), real=(9, 3, 40))
    lengths = sizes(tiny=[5], real=[1234])
    case = _paged_case(lengths, H, KV, hd, kv_block, sizes(tiny=3, real=100), sizes(tiny=7, real=300),
                       torch.float32, device, seed=4)
    _check(day, case, f"paged_decode_attention H={H} KV={KV} hd={hd}", torch.float32, block_size=bs)


@pytest.mark.parametrize("H,KV", [(8, 2), (12, 4)])
def test_gqa_group_is_h_over_kv_not_kv_in_a_batch(day, sizes, device, bs, H, KV):
    """Query head h reads KV head h // (H / KV), in every sequence of the batch. With H / KV == KV
    (9 / 3, 4 / 2) a kernel that used KV as the group size would pass; 8 / 2 and 12 / 4 do not."""
    kv_block = sizes(tiny=4, real=16)
    hd, max_blocks, num_blocks = sizes(tiny=(16, 4, 16), real=(64, 128, 600))
    lengths = sizes(tiny=[13, 5, 16], real=[2000, 70, 1, 777])
    case = _paged_case(lengths, H, KV, hd, kv_block, max_blocks, num_blocks, torch.float32, device, seed=H)
    for splits in sizes(tiny=[0, 3], real=[0, 9]):
        _check(day, case, f"paged_decode_attention H={H} KV={KV} (groups of {H // KV}) lengths {lengths} "
               f"splits={splits or 'auto'}", torch.float32, splits=splits, block_size=bs, merge_block=bs)


@pytest.mark.parametrize("splits", [0, 3, 7])
def test_short_and_long_sequences_in_a_wide_table(day, sizes, device, bs, splits):
    """A table far wider than the sequences (an engine's pool sized for its longest request): each
    sequence's splits cut its own live positions, short or long, in whole KV blocks."""
    kv_block = sizes(tiny=4, real=16)
    H, KV, hd, max_blocks, num_blocks = sizes(tiny=(4, 2, 16, 40, 50), real=(9, 3, 64, 1024, 1400))
    lengths = sizes(tiny=[3, 9, 61, 22], real=[3, 70, 5000, 513])
    case = _paged_case(lengths, H, KV, hd, kv_block, max_blocks, num_blocks, torch.float32, device, seed=5 + splits)
    _check(day, case, f"paged_decode_attention lengths {lengths} in a table of {max_blocks} blocks "
           f"splits={splits or 'auto'}", torch.float32, splits=splits, block_size=bs)


def _poisoned_call(day, shape, dtype, device, *args, **knobs):
    """Free a NaN-filled tensor of the output's size just before the call: an allocator hands the
    same memory back, so an output that is returned without being written shows NaN, not zeros."""
    junk = torch.full(shape, float("nan"), dtype=dtype, device=device)
    del junk
    return day.paged_decode_attention(*args, **knobs)


def test_no_sequences_or_no_blocks_or_no_keys_give_exact_zeros(day, sizes, device, bs):
    """B == 0 returns [0, H, hd]; a table with no blocks (max_blocks == 0) and sequences of length 0
    return zeros -- written zeros, not whatever memory the output happened to get."""
    H, KV, hd, kv_block = 4, 2, 16, 4
    pool = randn(6, KV, kv_block, hd, device=device, seed=12)
    for dtype in DTYPES:
        q = randn(3, H, hd, dtype=dtype, device=device, seed=13)
        kp, vp = pool.to(dtype), (2 * pool).to(dtype)
        none = _poisoned_call(day, (0, H, hd), dtype, device, q[:0], kp, vp,
                              torch.zeros(0, 2, dtype=torch.int32, device=device),
                              torch.zeros(0, dtype=torch.int32, device=device), block_size=bs)
        assert tuple(none.shape) == (0, H, hd), f"B == 0: output shape {tuple(none.shape)}, expected (0, {H}, {hd})"
        for _ in range(2):
            out = _poisoned_call(day, (3, H, hd), dtype, device, q, kp, vp,
                                 torch.zeros(3, 0, dtype=torch.int32, device=device),
                                 torch.zeros(3, dtype=torch.int32, device=device), block_size=bs)
            assert out.shape == q.shape and bool((out == 0).all()), \
                f"block tables with no blocks (max_blocks == 0, {dtype}): expected exact zeros, got {out.flatten()[:4]}"
            tables = torch.tensor([[3, 0], [1, 4], [5, 2]], dtype=torch.int32, device=device)
            out = _poisoned_call(day, (3, H, hd), dtype, device, q, kp, vp, tables,
                                 torch.zeros(3, dtype=torch.int32, device=device), splits=2, block_size=bs,
                                 merge_block=bs)
            assert bool((out == 0).all()), \
                f"every context length 0 ({dtype}): expected exact zeros, got {out.flatten()[:4]}"


def test_same_buffers_replay_with_new_tables_and_lengths(day, sizes, device, bs):
    """Like a CUDA graph replay: the tables and lengths change in place, nothing else does."""
    kv_block = sizes(tiny=4, real=16)
    H, KV, hd, max_blocks, num_blocks = sizes(tiny=(4, 2, 16, 4, 16), real=(9, 3, 64, 64, 256))
    first = sizes(tiny=[3, 14], real=[3, 1000])
    q, k_pool, v_pool, tables, lens = _paged_case(first, H, KV, hd, kv_block, max_blocks, num_blocks,
                                                  torch.float32, device, seed=5)
    k_pool.copy_(randn(*k_pool.shape, seed=6)), v_pool.copy_(randn(*v_pool.shape, seed=7))
    for step, new in enumerate(sizes(tiny=([9, 1],), real=([1024, 1], [17, 600]))):
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(step))[:2 * max_blocks]
        tables.copy_(perm.reshape(2, max_blocks).to(torch.int32))
        lens.copy_(torch.tensor(new, dtype=torch.int32))
        _check(day, (q, k_pool, v_pool, tables, lens), f"paged_decode_attention after tables and lengths were "
               f"rewritten in place (lengths {new})", torch.float32, block_size=bs)


def test_tables_and_lengths_are_read_on_the_device_not_the_host(day, device, bs):
    """.item() / .tolist() / int() on block_tables or context_lens syncs the GPU and bakes the
    values into the launch: a captured graph would replay them forever."""
    case = _paged_case([6, 1], 4, 2, 16, 4, 3, 8, torch.float32, device, seed=8)
    expected = reference.paged_decode_attention(*case)
    with no_host_reads():
        out = day.paged_decode_attention(*case, block_size=bs)
    assert_close(out, expected, "paged_decode_attention output")


def test_bad_inputs_raise_value_error(day, device):
    q = torch.zeros(2, 4, 16, device=device)
    pool = torch.zeros(8, 2, 4, 16, device=device)
    tables = torch.zeros(2, 3, dtype=torch.int32, device=device)
    lens = torch.ones(2, dtype=torch.int32, device=device)
    for args, knobs, what in [((q, pool, pool, tables, [1, 1]), {}, "context_lens as a Python list"),
                              ((q, pool, pool, tables.long(), lens), {}, "int64 block_tables"),
                              ((q, pool, pool, tables[:1], lens), {}, "one table row for two sequences"),
                              ((q[0], pool, pool, tables, lens), {}, "q without a batch dimension"),
                              ((q, pool[0], pool[0], tables, lens), {}, "a pool without the block dimension"),
                              ((torch.zeros(2, 3, 16, device=device), pool, pool, tables, lens), {},
                               "H=3 not a multiple of KV=2"),
                              ((q, torch.zeros(8, 2, 4, 8, device=device), torch.zeros(8, 2, 4, 8, device=device),
                                tables, lens), {}, "head_dim mismatch"),
                              ((q, pool, pool, tables, lens), dict(block_size=100), "block_size 100")]:
        with pytest.raises(ValueError):
            day.paged_decode_attention(*args, **knobs)
            pytest.fail(f"paged_decode_attention accepted {what}; raise ValueError")


# ---- GPU only -------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_no_host_sync_and_one_graph_replays_new_tables(day, device):
    """No sync in the call (sync debug mode), and a captured call replays with new tables and lengths."""
    case = _paged_case([700, 5, 64], 9, 3, 64, 16, 64, 256, torch.float16, device, seed=9)
    q, k_pool, v_pool, tables, lens = case
    k_pool.copy_(randn(*k_pool.shape, dtype=torch.float16, seed=10)), v_pool.copy_(randn(*v_pool.shape,
                                                                                          dtype=torch.float16, seed=11))
    day.paged_decode_attention(*case)               # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = day.paged_decode_attention(*case)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(out, reference.paged_decode_attention(*case), "paged_decode_attention", **tol(torch.float16, 5))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    gc.disable()
    try:
        with torch.cuda.graph(graph, stream=side):
            out = day.paged_decode_attention(*case)
    finally:
        gc.enable()
    for step, new in enumerate(([1, 1024, 0], [513, 16, 17], [1024, 1024, 1024])):
        perm = torch.randperm(256, generator=torch.Generator().manual_seed(step))[:3 * 64]
        tables.copy_(perm.reshape(3, 64).to(torch.int32))
        lens.copy_(torch.tensor(new, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, reference.paged_decode_attention(*case), f"graph replayed with lengths {new}",
                     **tol(torch.float16, 5))


LENGTHS = (512, 1024, 2048, 4096, 8192)
LAYOUTS = {"smollm2_H9_KV3": (9, 3, 64), "llama1b_H32_KV8": (32, 8, 64)}


def _contiguous_day_27(track):
    """Your day 27 (the course's when yours is not written yet): the kernel without the table."""
    mod = day_module(27, track)
    try:
        q, k = torch.zeros(4, 16, device="cuda"), torch.zeros(2, 8, 16, device="cuda")
        mod.decode_attention(q, k, k, torch.ones(1, dtype=torch.int32, device="cuda"))
        return mod.decode_attention, track
    except NotImplementedError:
        return day_module(27, "solutions").decode_attention, "solutions"


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_paged_vs_contiguous(day, track, device):
    """What the indirection costs: the paged kernel (16-token blocks, shuffled) vs the contiguous
    day-27 kernel on the same keys, both replayed from CUDA graphs in this run, B=1, fp16,
    8192 positions of room. B=8 is recorded too (per sequence, against 8 contiguous calls)."""
    contiguous, whose = _contiguous_day_27(track)
    kv_block, max_seq = 16, 8192
    max_blocks = max_seq // kv_block
    result = {"gpu": torch.cuda.get_device_name(), "dtype": "fp16", "kv_block": kv_block, "max_seq": max_seq,
              "timing": "CUDA graph replay", "unit": "us per call", "day27": whose}
    for name, (H, KV, hd) in LAYOUTS.items():
        g = torch.Generator().manual_seed(0)
        k = randn(KV, max_seq, hd, dtype=torch.float16, device=device, seed=1)
        v = randn(KV, max_seq, hd, dtype=torch.float16, device=device, seed=2)
        for B in (1, 8):
            q = randn(B, H, hd, dtype=torch.float16, device=device, seed=3)
            perm = torch.randperm(B * max_blocks, generator=g).reshape(B, max_blocks)
            tables = perm.to(torch.int32).to(device)
            k_pool = torch.empty(B * max_blocks, KV, kv_block, hd, dtype=torch.float16, device=device)
            v_pool = torch.empty_like(k_pool)
            blocks = k.reshape(KV, max_blocks, kv_block, hd).transpose(0, 1)       # [max_blocks, KV, blk, hd]
            for b in range(B):                                                   # every sequence: the same keys
                k_pool[perm[b].to(device)] = blocks
                v_pool[perm[b].to(device)] = v.reshape(KV, max_blocks, kv_block, hd).transpose(0, 1)
            lens = torch.zeros(B, dtype=torch.int32, device=device)
            cache_len = torch.zeros(1, dtype=torch.int32, device=device)
            for n in LENGTHS:
                lens.fill_(n), cache_len.fill_(n)
                paged = day.paged_decode_attention(q, k_pool, v_pool, tables, lens)
                for b in range(B):
                    assert_close(paged[b], reference.decode_attention(q[b], k, v, cache_len),
                                 f"paged_decode_attention {name} B={B} sequence {b} at length {n}",
                                 **tol(torch.float16, 5))
                t_paged = graph_us(lambda: day.paged_decode_attention(q, k_pool, v_pool, tables, lens))
                t_contig = graph_us(lambda: [contiguous(q[b], k, v, cache_len) for b in range(B)])
                result[f"{name}_B{B}_n{n}_paged_us"] = round(t_paged, 2)
                result[f"{name}_B{B}_n{n}_contiguous_us"] = round(t_contig, 2)
                result[f"{name}_B{B}_n{n}_speed_vs_contiguous"] = round(t_contig / t_paged, 2)
    record_bench("day_30_paged_decode", result)
    for name in LAYOUTS:
        for n in (2048, 4096, 8192):
            speed = result[f"{name}_B1_n{n}_speed_vs_contiguous"]
            assert speed >= 0.8, (f"{name} B=1 length {n}: paged decode runs at {speed:.2f}x the contiguous kernel's "
                                  "speed (want >= 0.8x): look up each block once per key, keep the grid as "
                                  "big as day 27's")


SHORT_FLOOR = 0.6   # x day 20's one-kernel speed at SHORT positions; see checkers/day_27 (issue 14's goal: 1.0)
SHORT = 70          # the engine's case in issue 14: a short chat, a pool sized for 1024 tokens
WIDE = 1024         # table entries of the engine's pool for its longest request (16384 positions of 16)
WIDE_CEILING = 1.3  # x the time of the same SHORT (and MID) positions in a table of 64 entries
MID = 513           # a longer chat: a split that walks a table-sized chunk step by step shows here


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_short_context(day, track, device):
    """What the engine's decode step pays at the start of a chat: 70 cached positions, B=1, fp16, a
    table of 64 blocks of 16 (1024 positions), shuffled; replayed from CUDA graphs in this run against
    day 20's contiguous kernel (and your day 27's) on the same keys in a cache of 1024. The same
    70 positions in a table of 1024 entries (a pool sized for 16384 positions) must cost about the
    same, and so must 513: the work follows the live length, not the table's width (a split that
    walks its chunk one step after another hides at 70 positions, not at 513)."""
    contiguous, whose = _contiguous_day_27(track)
    base = day_module(20, "solutions").decode_attention
    kv_block, max_seq = 16, 1024
    max_blocks = max_seq // kv_block
    result = {"gpu": torch.cuda.get_device_name(), "dtype": "fp16", "kv_block": kv_block, "max_seq": max_seq,
              "wide_table_blocks": WIDE, "context_len": SHORT, "timing": "CUDA graph replay", "unit": "us per call",
              "day27": whose}
    for name, (H, KV, hd) in LAYOUTS.items():
        k = randn(KV, max_seq, hd, dtype=torch.float16, device=device, seed=1)
        v = randn(KV, max_seq, hd, dtype=torch.float16, device=device, seed=2)
        q = randn(1, H, hd, dtype=torch.float16, device=device, seed=3)
        perm = torch.randperm(max_blocks, generator=torch.Generator().manual_seed(0))
        k_pool = torch.empty(max_blocks, KV, kv_block, hd, dtype=torch.float16, device=device)
        v_pool = torch.empty_like(k_pool)
        k_pool[perm.to(device)] = k.reshape(KV, max_blocks, kv_block, hd).transpose(0, 1)
        v_pool[perm.to(device)] = v.reshape(KV, max_blocks, kv_block, hd).transpose(0, 1)
        tables = perm[None].to(torch.int32).to(device)
        wide = torch.cat([tables, torch.zeros(1, WIDE - max_blocks, dtype=torch.int32, device=device)], dim=1)
        for n in (SHORT, MID):
            lens = torch.full((1,), n, dtype=torch.int32, device=device)
            cache_len = torch.full((1,), n, dtype=torch.int32, device=device)
            want = reference.decode_attention(q[0], k, v, cache_len)
            for table, what in ((tables, ""), (wide, f" in a table of {WIDE} entries")):
                assert_close(day.paged_decode_attention(q, k_pool, v_pool, table, lens)[0], want,
                             f"paged_decode_attention {name} at {n}{what}", **tol(torch.float16, 5))
            t_paged = graph_us(lambda: day.paged_decode_attention(q, k_pool, v_pool, tables, lens))
            t_wide = graph_us(lambda: day.paged_decode_attention(q, k_pool, v_pool, wide, lens))
            suffix = "" if n == SHORT else f"_at_{n}"
            result[f"{name}_paged_us{suffix}"] = round(t_paged, 2)
            result[f"{name}_paged_wide_table_us{suffix}"] = round(t_wide, 2)
            result[f"{name}_wide_over_narrow{suffix}"] = round(t_wide / t_paged, 2)
            if n == SHORT:
                t_27 = graph_us(lambda: contiguous(q[0], k, v, cache_len))
                t_20 = graph_us(lambda: base(q[0], k, v, cache_len))
                result[f"{name}_day27_us"] = round(t_27, 2)
                result[f"{name}_day20_us"] = round(t_20, 2)
                result[f"{name}_speed_vs_day20"] = round(t_20 / t_paged, 2)
    record_bench("day_30_paged_decode_short", result)
    for name in LAYOUTS:
        speed = result[f"{name}_speed_vs_day20"]
        assert speed >= SHORT_FLOOR, (f"{name}: at {SHORT} positions paged decode runs at {speed:.2f}x day 20's speed: does "
                            "each block's work follow the live length, and does the merge read only live splits?")
        for n, suffix in ((SHORT, ""), (MID, f"_at_{MID}")):
            wide = result[f"{name}_wide_over_narrow{suffix}"]
            assert wide <= WIDE_CEILING, (f"{name}: {n} positions in a table of {WIDE} entries take {wide:.2f}x their "
                                          f"time in a table of {max_blocks}: size each split's chunk by the live "
                                          "length (chunk_of), not by the table's width")
