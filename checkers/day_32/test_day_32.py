"""Day 32 checker: the KV memory study -- static reservation vs a paged pool. Run: pytest checkers/day_32

Your step-by-step simulation (through the BlockAllocator) against an independent closed-form
count: at step t a request is live for arrival <= t < arrival + output_len and holds
prompt_len + (t - arrival) tokens. Then the targets on the seeded 32-request workload: at least
35% less peak KV memory than a static cache, and under 4% of allocated slots wasted at block
size 16. Host Python only (no GPU).
"""
import math
import random

import pytest


def expected(requests, block_size, max_len=None):
    """The same numbers without an allocator: per step, who is live and how many tokens each holds."""
    max_len = max_len or max(r.prompt_len + r.output_len for r in requests)
    last = max(r.arrival + r.output_len - 1 for r in requests)
    out = dict(live=[], used=[], allocated=[], reserved=[])
    for t in range(last + 1):
        held = [r.prompt_len + t - r.arrival for r in requests if r.arrival <= t < r.arrival + r.output_len]
        out["live"].append(len(held))
        out["used"].append(sum(held))
        out["allocated"].append(sum(math.ceil(n / block_size) * block_size for n in held))
        out["reserved"].append(len(held) * max_len)
    return out


def random_workload(day, seed, n=12, span=30):
    """Small odd workloads: output_len 1 (one step), shared arrival steps, idle gaps."""
    rng = random.Random(seed)
    return [day.memory_study.Request(rng.randrange(span), rng.randint(1, 40), rng.choice([1, 2, rng.randint(1, 25)]))
            for _ in range(n)]


class Counting:
    """Wraps the track's BlockAllocator and counts the calls (the study must go through it)."""

    def __init__(self, cls):
        self.cls, self.calls = cls, {"allocate": 0, "append_slot": 0, "free": 0}

    def __call__(self, num_blocks, block_size):
        inner, calls = self.cls(num_blocks, block_size), self.calls

        class Proxy:
            def __getattr__(self, name):
                if name in calls:
                    calls[name] += 1
                return getattr(inner, name)
        return Proxy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_size", [1, 7, 16])
def test_per_step_numbers_match_an_independent_count(day, ops, seed, block_size):
    reqs = random_workload(day, seed)
    s = day.kv_memory_study(reqs, block_size=block_size, allocator_cls=ops.BlockAllocator)
    want = expected(reqs, block_size)
    assert s.block_size == block_size and s.max_len == max(r.prompt_len + r.output_len for r in reqs)
    for name in ("live", "used", "allocated", "reserved"):
        got = list(getattr(s, name))
        assert len(got) == len(want[name]), \
            f"{name}: {len(got)} steps, expected {len(want[name])} (steps 0 .. the last request's last step)"
        bad = [t for t, (g, w) in enumerate(zip(got, want[name])) if g != w]
        assert not bad, (f"{name} at step {bad[0]}: {got[bad[0]]}, expected {want[name][bad[0]]} "
                         f"(block_size {block_size}, workload seed {seed}; {len(bad)} steps differ)")


def test_goes_through_the_allocator_and_a_static_max_len(day, ops):
    reqs = random_workload(day, 5)
    counting = Counting(ops.BlockAllocator)
    s = day.kv_memory_study(reqs, block_size=4, max_len=100, allocator_cls=counting)
    assert counting.calls["allocate"] == len(reqs), f"{counting.calls['allocate']} allocate calls for {len(reqs)} requests"
    assert counting.calls["append_slot"] == sum(r.output_len - 1 for r in reqs), \
        "one append_slot per fed-back token: output_len - 1 per request"
    last = max(r.arrival + r.output_len for r in reqs)
    assert counting.calls["free"] == sum(1 for r in reqs if r.arrival + r.output_len < last), \
        "free each request the step after its last step (those finishing at the very end need not be freed)"
    assert s.reserved == expected(reqs, 4, max_len=100)["reserved"], "reserved = live sequences x max_len"


def test_summary_numbers(day, ops):
    reqs = random_workload(day, 9, n=20)
    s = day.kv_memory_study(reqs, block_size=8, allocator_cls=ops.BlockAllocator)
    w = expected(reqs, 8)
    waste = sum(a - u for a, u in zip(w["allocated"], w["used"])) / sum(w["allocated"])
    assert s.peak_paged == max(w["allocated"]) and s.peak_static == max(w["reserved"])
    assert s.saving == pytest.approx(1 - max(w["allocated"]) / max(w["reserved"])), "saving = 1 - peak paged / peak static"
    assert s.waste_fraction == pytest.approx(waste), "waste = unused allocated slots over all allocated, every step"
    assert s.peak_table_entries == max(w["allocated"]) // 8


@pytest.mark.parametrize("block_size", [7, 16])
def test_pool_holds_every_request_at_once(day, ops, block_size):
    """The lesson's pool never runs out: every request live at the same step, each ending mid-block,
    needs one partly filled block per request -- sum the blocks of each request, do not round the
    total token count once (that pool runs out here)."""
    R = day.memory_study.Request
    reqs = [R(0, 1 + i % 3, 2 + i % 2) for i in range(10)] + [R(1, block_size + 1, 2)]
    try:
        s = day.kv_memory_study(reqs, block_size=block_size, allocator_cls=ops.BlockAllocator)
    except Exception as e:
        pytest.fail(f"the study's pool ran out with {len(reqs)} requests live at once ({type(e).__name__}: {e}): "
                    "size it per request, the sum of ceil((prompt_len + output_len) / block_size)")
    want = expected(reqs, block_size)
    assert list(s.allocated) == want["allocated"], f"allocated {list(s.allocated)}, expected {want['allocated']}"


def test_workload_is_seeded(day):
    """The same seed gives the same requests, whatever else used Python's random module in between;
    other seeds give other requests."""
    make = day.memory_study.make_workload
    first = make(32, seed=3)
    random.seed(12345)
    random.random()
    assert make(32, seed=3) == first, "make_workload(32, seed=3) changed between two calls: use random.Random(seed)"
    assert make(32, seed=4) != first, "seeds 3 and 4 gave the same workload"


def test_workload_lengths_are_log_uniform(day):
    """Log-uniform in [lo, hi]: as many lengths below the geometric mean sqrt(lo * hi) as above it,
    and each quarter of log(lo)..log(hi) gets a quarter of them (uniform lengths would put most
    near the top). Arrivals uniform in [0, arrival_span)."""
    n, span = 4000, 256
    reqs = day.memory_study.make_workload(n, seed=11, prompt_range=(32, 1024), output_range=(16, 512),
                                          arrival_span=span)
    assert len(reqs) == n and [r.arrival for r in reqs] == sorted(r.arrival for r in reqs), \
        "n requests, sorted by arrival step"
    for name, (lo, hi) in (("prompt_len", (32, 1024)), ("output_len", (16, 512))):
        values = [getattr(r, name) for r in reqs]
        assert lo <= min(values) and max(values) <= hi, f"{name} outside [{lo}, {hi}]: {min(values)}..{max(values)}"
        edges = [lo * (hi / lo) ** (q / 4) for q in range(1, 4)]
        shares = [sum(v < e for v in values) / n for e in edges]
        assert all(abs(got - want) < 0.04 for got, want in zip(shares, (0.25, 0.5, 0.75))), \
            (f"{name}: shares below the log-quartiles {[round(e) for e in edges]} are {[round(x, 3) for x in shares]}, "
             "expected about 0.25, 0.5, 0.75 (log-uniform: exp(uniform(log lo, log hi)))")
    arrivals = [r.arrival for r in reqs]
    assert 0 <= min(arrivals) and max(arrivals) < span, f"arrivals outside [0, {span}): {min(arrivals)}..{max(arrivals)}"
    assert abs(sum(a < span / 2 for a in arrivals) / n - 0.5) < 0.04, "arrival steps are uniform over [0, arrival_span)"


def test_bad_input_is_a_value_error(day, ops):
    reqs = random_workload(day, 1)
    for kw in (dict(block_size=0), dict(block_size=-3)):
        with pytest.raises(ValueError):
            day.kv_memory_study(reqs, allocator_cls=ops.BlockAllocator, **kw)
    with pytest.raises(ValueError):
        day.kv_memory_study([], block_size=16, allocator_cls=ops.BlockAllocator)


# ---- the targets on the seeded workload -----------------------------------------------------------------
@pytest.fixture(scope="module")
def workload(day):
    reqs = day.memory_study.make_workload(32, seed=0)
    assert len(reqs) == 32 and len({r.prompt_len + r.output_len for r in reqs}) > 20, "32 requests of mixed lengths"
    return reqs


def test_paged_needs_35_percent_less_peak_memory(day, ops, workload):
    s = day.kv_memory_study(workload, block_size=16, allocator_cls=ops.BlockAllocator)
    w = expected(workload, 16)
    assert max(s.allocated) == max(w["allocated"]) and max(s.reserved) == max(w["reserved"])
    assert s.saving >= 0.35, f"paged peak {s.peak_paged} vs static {s.peak_static} slots: only {s.saving:.0%} saved"


def test_waste_under_4_percent_at_block_size_16(day, ops, workload):
    s = day.kv_memory_study(workload, block_size=16, allocator_cls=ops.BlockAllocator)
    assert s.waste_fraction < 0.04, f"{s.waste_fraction:.1%} of allocated slots unused at block size 16"
    assert max(a - u for a, u in zip(s.allocated, s.used)) <= 15 * max(s.live), \
        "internal fragmentation is at most block_size - 1 slots per live sequence"


def test_block_size_sweep(day, workload, monkeypatch, ops):
    from shared.course import registry
    monkeypatch.setattr(registry, "resolve", lambda name, track=None: ops.BlockAllocator if name == "BlockAllocator"
                        else pytest.fail(f"the study resolves only BlockAllocator, not {name}"))
    monkeypatch.setattr(day.memory_study, "resolve", registry.resolve, raising=False)
    rows = day.block_size_sweep(workload, block_sizes=(8, 16, 32, 64))
    assert [r["block_size"] for r in rows] == [8, 16, 32, 64]
    for r in rows:
        w = expected(workload, r["block_size"])
        waste = sum(a - u for a, u in zip(w["allocated"], w["used"])) / sum(w["allocated"])
        assert r["peak_paged"] == max(w["allocated"]) and r["peak_static"] == max(w["reserved"]), r
        assert r["waste_fraction"] == pytest.approx(waste) and r["saving"] == pytest.approx(
            1 - max(w["allocated"]) / max(w["reserved"])), r
        assert r["peak_table_entries"] == max(w["allocated"]) // r["block_size"], r
    wastes = [r["waste_fraction"] for r in rows]
    tables = [r["peak_table_entries"] for r in rows]
    assert wastes == sorted(wastes) and tables == sorted(tables, reverse=True), \
        "bigger blocks: more waste, shorter tables"
