"""Day 29 checker: paged_kv_write, the slot-mapping scatter. Run: pytest checkers/day_29

The pools start full of NaN, so a write to the wrong place, or to a padding slot, shows. Block
tables are shuffled (a sequence's blocks are anywhere in the pool), and reading a sequence back
through its table must give exactly day 19's contiguous cache [KV, length, hd].
"""
import pytest
import torch

from shared import reference
from shared.course.testing import assert_close, cuda_time_ms, no_host_reads, randn, record_bench

DTYPES = [torch.float32, torch.float16]


def nan_pools(num_blocks, kv, bs, hd, dtype, device):
    shape = (num_blocks, kv, bs, hd)
    return (torch.full(shape, float("nan"), dtype=dtype, device=device),
            torch.full(shape, float("nan"), dtype=dtype, device=device))


def slots_tensor(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def gather(pool, table, length):
    """A sequence's keys read back through its block table: [KV, length, hd], day 19's layout."""
    blocks = pool[torch.tensor(table, dtype=torch.long, device=pool.device)]      # [n, KV, bs, hd]
    n, kv, bs, hd = blocks.shape
    return blocks.permute(1, 0, 2, 3).reshape(kv, n * bs, hd)[:, :length]


def write_and_compare(day, k_pool, v_pool, k, v, slots, what, **launch):
    """Your write against the reference's on copies of the same pools: every element of both pools
    must match -- the addressed slots hold k, v and everything else is untouched."""
    want_k, want_v = k_pool.clone(), v_pool.clone()
    reference.paged_kv_write(want_k, want_v, k, v, slots)
    result = day.paged_kv_write(k_pool, v_pool, k, v, slots, **launch)
    assert result is None, "paged_kv_write writes the pools in place and returns None"
    assert_close(k_pool, want_k, f"k_pool after {what}", atol=0, rtol=0)
    assert_close(v_pool, want_v, f"v_pool after {what}", atol=0, rtol=0)


class Seq:
    """A sequence's block table (hand-made, shuffled) and the contiguous cache it must equal."""

    def __init__(self, table, bs, kv, max_seq, hd, dtype, device):
        self.table, self.bs, self.n = table, bs, 0
        self.k = torch.zeros(kv, max_seq, hd, dtype=dtype, device=device)
        self.v = torch.zeros(kv, max_seq, hd, dtype=dtype, device=device)

    def slot(self, p):
        return self.table[p // self.bs] * self.bs + p % self.bs


@pytest.mark.parametrize("dtype,pool_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                              (torch.float32, torch.float16), (torch.float16, torch.float32)])
def test_prompt_then_tokens_read_back_as_the_contiguous_cache(day, sizes, device, dtype, pool_dtype):
    """Two sequences with shuffled tables: a batched prefill (odd T, a padding slot between the
    prompts), then batched decode steps with padding, then T = 1. After every step each sequence,
    gathered through its table, equals day 19's cache filled by kv_write at the same positions."""
    kv, bs, hd, num_blocks, prompts, steps = sizes(tiny=(3, 4, 5, 9, (7, 5), 3), real=(3, 16, 64, 512, (300, 77), 20))
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    need = [-(-(p + steps + 1) // bs) for p in prompts]
    seqs = [Seq(perm[:need[0]], bs, kv, need[0] * bs, hd, pool_dtype, device),
            Seq(perm[need[0]:need[0] + need[1]], bs, kv, need[1] * bs, hd, pool_dtype, device)]
    k_pool, v_pool = nan_pools(num_blocks, kv, bs, hd, pool_dtype, device)

    def step(new, what, seed):
        """new: per sequence, how many tokens it appends this step (None = a padding row)."""
        slots, positions = [], []
        for row in new:
            if row is None:
                slots.append(-1)
                continue
            s, count = row
            for _ in range(count):
                slots.append(s.slot(s.n))
                positions.append((s, s.n))
                s.n += 1
        T = len(slots)
        k = randn(T, kv, hd, dtype=dtype, device=device, seed=seed)
        v = randn(T, kv, hd, dtype=dtype, device=device, seed=seed + 1)
        write_and_compare(day, k_pool, v_pool, k, v, slots_tensor(slots, device), f"{what} (T={T}, slots {slots})")
        real = [t for t, s in enumerate(slots) if s >= 0]
        for s in seqs:
            rows = [t for t, (owner, _) in zip(real, positions) if owner is s]
            if rows:
                pos = slots_tensor([p for owner, p in positions if owner is s], device)
                reference.kv_write(s.k, s.v, k[rows], v[rows], pos)
        for i, s in enumerate(seqs):
            assert_close(gather(k_pool, s.table, s.n), s.k[:, :s.n], f"sequence {i}'s keys read back through its "
                         f"block table {s.table} after {what}", atol=0, rtol=0)
            assert_close(gather(v_pool, s.table, s.n), s.v[:, :s.n], f"sequence {i}'s values after {what}",
                         atol=0, rtol=0)

    a, b = seqs
    step([(a, prompts[0]), None, (b, prompts[1])], "the batched prefill", seed=10)
    for i in range(steps - 1):
        step([(a, 1), None, (b, 1)], f"decode step {i + 1}", seed=20 + 2 * i)
    step([(a, 1)], "a T=1 step", seed=90)


def padding_index_error(e, slots, bs):
    """The simulator's IndexError for a padding slot, as what it means: which slot, which index."""
    from shared.course.testing import sim_index_error
    where = sim_index_error(e)
    if where is None:
        return f"paged_kv_write raised IndexError: {str(e).splitlines()[0] if str(e) else ''}"
    index, axis, size = where
    culprit = next((s for s in slots if s < 0 and index in (s // bs, s % bs, s)), None)
    why = (f"slot {culprit} (padding) gives block {culprit} // {bs} = {culprit // bs}, offset {culprit % bs}"
           if culprit is not None else "a slot the kernel should have skipped")
    return (f"paged_kv_write indexed the pool at {index} (axis {axis}, size {size}) with slot_mapping {slots}: "
            f"{why} -- negative slots are padding: skip slot < 0 in the kernel before computing its block")


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_slots_are_never_written(day, device, dtype):
    """slot < 0 means "no token here". A kernel that still writes it computes block -1, offset
    block_size - 1 (Python's // and %): the last slot of the pool, or memory before it."""
    kv, bs, hd, num_blocks = 2, 4, 6, 5
    k_pool, v_pool = nan_pools(num_blocks, kv, bs, hd, dtype, device)
    slots = [-1, 6, -1, -4, 13, -5, -2147483648]
    k = randn(len(slots), kv, hd, dtype=dtype, device=device, seed=3)
    v = randn(len(slots), kv, hd, dtype=dtype, device=device, seed=4)
    problem = None
    try:
        day.paged_kv_write(k_pool, v_pool, k, v, slots_tensor(slots, device), threads=32)
    except IndexError as e:       # the simulator's bounds check, where a GPU writes someone else's memory
        problem = padding_index_error(e, slots, bs)
    if problem:
        pytest.fail(problem)
    for name, pool, src in (("k_pool", k_pool, k), ("v_pool", v_pool, v)):
        flat = pool.permute(0, 2, 1, 3).reshape(num_blocks * bs, kv, hd)          # [slot, KV, hd]
        written = torch.zeros(num_blocks * bs, dtype=torch.bool)
        for t, s in enumerate(slots):
            if s >= 0:
                written[s] = True
                assert_close(flat[s], src[t], f"{name} slot {s} (token {t})", atol=0, rtol=0)
        untouched = flat[written.to(flat.device).logical_not()]
        assert torch.isnan(untouched).all(), \
            f"{name}: {int((~torch.isnan(untouched)).sum())} elements outside the addressed slots 6 and 13 were " \
            f"written (slot_mapping {slots}: negative slots are padding)"


@pytest.mark.parametrize("dtype", DTYPES)
def test_slots_past_the_end_of_the_pool_are_never_written(day, device, dtype):
    """The engine passes one layer of [layers, num_blocks, ...]: a slot >= num_blocks * block_size
    would land in the next layer's blocks on a GPU (no error, just someone else's KV overwritten).
    The kernel's guard skips it; only the slots inside the pool are written."""
    layers, num_blocks, kv, bs, hd = 3, 4, 2, 4, 3
    end = num_blocks * bs
    k_all, v_all = nan_pools(layers * num_blocks, kv, bs, hd, dtype, device)
    k_all, v_all = k_all.view(layers, num_blocks, kv, bs, hd), v_all.view(layers, num_blocks, kv, bs, hd)
    slots = [end, 5, end + bs + 1, end - 1, 2 * end - 1]
    k = randn(len(slots), kv, hd, dtype=dtype, device=device, seed=15)
    v = randn(len(slots), kv, hd, dtype=dtype, device=device, seed=16)
    want_k, want_v = k_all.clone(), v_all.clone()
    for t, s in enumerate(slots):
        if s < end:
            want_k[1, s // bs, :, s % bs], want_v[1, s // bs, :, s % bs] = k[t], v[t]
    try:
        day.paged_kv_write(k_all[1], v_all[1], k, v, slots_tensor(slots, device), threads=32)
    except Exception as e:        # the simulator raises IndexError where a GPU writes out of bounds
        pytest.fail(f"paged_kv_write indexed past the pool with slot_mapping {slots} (pool of {end} slots): "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} -- skip slots >= "
                    "num_blocks * block_size in the kernel")
    for name, got, want in (("k", k_all, want_k), ("v", v_all, want_v)):
        assert_close(got[0], want[0], f"layer 0's {name} pool after writing layer 1 with slots {slots} "
                     f"(slots >= {end} are past the pool)", atol=0, rtol=0)
        assert_close(got[2], want[2], f"layer 2's {name} pool after writing layer 1 with slots {slots} "
                     f"(slots >= {end} are past the pool: skip them)", atol=0, rtol=0)
        assert_close(got[1], want[1], f"layer 1's {name} pool: slots 5 and {end - 1} written, nothing else",
                     atol=0, rtol=0)


def test_first_and_last_slot_of_the_pool(day, device):
    kv, bs, hd, num_blocks = 3, 5, 4, 4
    k_pool, v_pool = nan_pools(num_blocks, kv, bs, hd, torch.float32, device)
    k, v = randn(2, kv, hd, device=device, seed=5), randn(2, kv, hd, device=device, seed=6)
    write_and_compare(day, k_pool, v_pool, k, v, slots_tensor([num_blocks * bs - 1, 0], device),
                      "writing the pool's last slot (last block, last offset) and slot 0", threads=32)


@pytest.mark.parametrize("threads", [32, 64, 128])
def test_any_thread_count_and_element_count(day, device, threads):
    """T * KV * hd = 5 * 3 * 7 = 105: not a multiple of any block of threads."""
    kv, bs, hd, num_blocks = 3, 3, 7, 6
    k_pool, v_pool = nan_pools(num_blocks, kv, bs, hd, torch.float32, device)
    slots = [17, 2, 9, 0, 10]
    k = randn(5, kv, hd, device=device, seed=threads)
    v = randn(5, kv, hd, device=device, seed=threads + 1)
    write_and_compare(day, k_pool, v_pool, k, v, slots_tensor(slots, device), f"slots {slots}, threads={threads}",
                      threads=threads)


def test_one_layer_of_a_pool_and_views_of_qkv(day, device):
    """The engine passes one layer's pool (a view of [layers, ...]) and k, v sliced out of one qkv
    tensor: other layers must not change, and strided k, v must be read right."""
    layers, num_blocks, kv, bs, hd = 3, 4, 2, 4, 5
    k_all = randn(layers, num_blocks, kv, bs, hd, device=device, seed=7)
    v_all = randn(layers, num_blocks, kv, bs, hd, device=device, seed=8)
    want_k, want_v = k_all.clone(), v_all.clone()
    qkv = randn(3, 4 * kv, hd, device=device, seed=9)          # q: 2 * kv heads, then k, then v
    k, v = qkv[:, 2 * kv:3 * kv], qkv[:, 3 * kv:]
    slots = slots_tensor([5, 14, 3], device)
    reference.paged_kv_write(want_k[1], want_v[1], k, v, slots)
    day.paged_kv_write(k_all[1], v_all[1], k, v, slots, threads=32)
    assert_close(k_all, want_k, "all layers' k pools after writing layer 1 from a qkv slice", atol=0, rtol=0)
    assert_close(v_all, want_v, "all layers' v pools after writing layer 1 from a qkv slice", atol=0, rtol=0)


def test_same_buffers_new_slots(day, device):
    """Like a CUDA graph replay: the same tensors, only slot_mapping's contents change."""
    k_pool, v_pool = nan_pools(3, 2, 4, 3, torch.float32, device)
    k, v = randn(2, 2, 3, device=device, seed=11), randn(2, 2, 3, device=device, seed=12)
    slots = slots_tensor([1, -1], device)
    for values in ([1, -1], [7, 2], [-1, 11]):
        slots.copy_(torch.tensor(values, dtype=torch.int32))
        write_and_compare(day, k_pool, v_pool, k, v, slots, f"slot_mapping set in place to {values}", threads=32)


def test_slots_are_read_on_the_device_not_the_host(day, device):
    """.item() / .tolist() / .cpu() on slot_mapping syncs the GPU and cannot be captured in a graph."""
    k_pool, v_pool = nan_pools(4, 2, 4, 3, torch.float16, device)
    k, v = randn(3, 2, 3, dtype=torch.float16, device=device, seed=13), randn(3, 2, 3, dtype=torch.float16,
                                                                                device=device, seed=14)
    slots = slots_tensor([9, -1, 4], device)
    want_k, want_v = k_pool.clone(), v_pool.clone()
    reference.paged_kv_write(want_k, want_v, k, v, slots)
    with no_host_reads():
        day.paged_kv_write(k_pool, v_pool, k, v, slots, threads=32)
    assert_close(k_pool, want_k, "k_pool", atol=0, rtol=0)
    assert_close(v_pool, want_v, "v_pool", atol=0, rtol=0)


def test_no_tokens_is_a_no_op(day, device):
    k_pool, v_pool = nan_pools(2, 2, 4, 3, torch.float32, device)
    empty = torch.zeros(0, 2, 3, device=device)
    day.paged_kv_write(k_pool, v_pool, empty, empty, slots_tensor([], device))
    assert torch.isnan(k_pool).all() and torch.isnan(v_pool).all(), "T = 0 must write nothing"


@pytest.mark.parametrize("case", ["slots_int64", "slots_too_short", "slots_2d", "k_heads", "k_hd", "k_v_differ",
                                  "pools_differ", "pool_3d", "int_pool", "pool_dtypes_differ"])
def test_bad_inputs_raise_value_error(day, device, case):
    kp, vp = torch.zeros(4, 2, 4, 3, device=device), torch.zeros(4, 2, 4, 3, device=device)
    k, v = torch.zeros(3, 2, 3, device=device), torch.zeros(3, 2, 3, device=device)
    slots = slots_tensor([0, 1, 2], device)
    if case == "slots_int64":
        slots = slots.long()
    elif case == "slots_too_short":
        slots = slots[:2]
    elif case == "slots_2d":
        slots = slots[None]
    elif case == "k_heads":
        k = v = torch.zeros(3, 3, 3, device=device)
    elif case == "k_hd":
        k = v = torch.zeros(3, 2, 4, device=device)
    elif case == "k_v_differ":
        v = torch.zeros(2, 2, 3, device=device)
    elif case == "pools_differ":
        vp = torch.zeros(4, 2, 5, 3, device=device)
    elif case == "pool_3d":
        kp = vp = torch.zeros(4, 8, 3, device=device)
    elif case == "int_pool":
        kp = vp = torch.zeros(4, 2, 4, 3, dtype=torch.int32, device=device)
    else:
        vp = vp.half()
    with pytest.raises(ValueError) as e:
        day.paged_kv_write(kp, vp, k, v, slots)
        pytest.fail(f"paged_kv_write accepted bad input ({case}); raise ValueError before launching")
    assert "\n" not in str(e.value), f"error messages are one line, got {str(e.value)!r}"


# ---- GPU only -------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_no_host_sync(day, device):
    """torch's sync debug mode raises if anything in the call synchronizes the GPU with the host."""
    num_blocks, kv, bs, hd = 256, 3, 16, 64
    k_pool, v_pool = nan_pools(num_blocks, kv, bs, hd, torch.float16, device)
    k = randn(8, kv, hd, dtype=torch.float16, device=device, seed=1)
    v = randn(8, kv, hd, dtype=torch.float16, device=device, seed=2)
    slots = slots_tensor([5, 700, -1, 4095, 16, 17, -1, 1000], device)
    want_k, want_v = k_pool.clone(), v_pool.clone()
    reference.paged_kv_write(want_k, want_v, k, v, slots)
    day.paged_kv_write(k_pool.clone(), v_pool.clone(), k, v, slots)     # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        day.paged_kv_write(k_pool, v_pool, k, v, slots)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(k_pool, want_k, "k_pool", atol=0, rtol=0)
    assert_close(v_pool, want_v, "v_pool", atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_paged_kv_write_vs_torch_indexing(day, device):
    """A report, not a target: your scatter against torch's indexed assignment (the reference),
    for a 512-token prefill and a 64-sequence decode step (recorded in
    build/bench/day_29_paged_kv_write.json). What it asserts is that the timed writes were right."""
    num_blocks, kv, bs, hd = 1024, 3, 16, 64
    k_pool = torch.zeros(num_blocks, kv, bs, hd, dtype=torch.float16, device=device)
    v_pool = torch.zeros_like(k_pool)
    g = torch.Generator().manual_seed(0)
    result = {"gpu": torch.cuda.get_device_name(), "pool": [num_blocks, kv, bs, hd]}
    for label, T in (("prefill_T512", 512), ("decode_B64", 64)):
        k = randn(T, kv, hd, dtype=torch.float16, device=device, seed=T)
        slots = torch.randperm(num_blocks * bs, generator=g)[:T].to(torch.int32).to(device)
        result[f"{label}_ms"] = cuda_time_ms(lambda: day.paged_kv_write(k_pool, v_pool, k, k, slots), 200)
        result[f"{label}_torch_ms"] = cuda_time_ms(lambda: reference.paged_kv_write(k_pool, v_pool, k, k, slots), 200)
        want_k, want_v = k_pool.clone(), v_pool.clone()
        reference.paged_kv_write(want_k, want_v, k, k, slots)
        day.paged_kv_write(k_pool, v_pool, k, k, slots)
        assert_close(k_pool, want_k, f"k_pool after the timed write ({label})", atol=0, rtol=0)
    record_bench("day_29_paged_kv_write", result)
