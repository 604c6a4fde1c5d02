"""Day 28 checker: the BlockAllocator. Run: pytest checkers/day_28

Two kinds of test. Short scripted cases (allocate 0 tokens, block boundaries, fork and copy on
write, truncate, running out of blocks, double free) with messages that say what went wrong. Then
a property test: hypothesis drives random allocate / append_slot / fork / truncate / free sequences
against your allocator and the reference in lockstep, and after every step checks the invariants
below. On a failure it prints the shortest sequence of steps it found that breaks one.
"""
import re

import pytest

from shared import reference
from shared.engine.errors import OutOfBlocksError


# ---- helpers ------------------------------------------------------------------------------------
def snapshot(a, seqs):
    """Everything a failing call must leave unchanged, read through the public API."""
    return {"tables": {s: a.block_table(s) for s in seqs}, "lengths": {s: a.length(s) for s in seqs},
            "ref_counts": list(a.ref_counts), "num_free": a.num_free}


def assert_unchanged(a, seqs, before, what):
    after = snapshot(a, seqs)
    for key in before:
        assert after[key] == before[key], f"{what} failed but changed {key}: {before[key]} -> {after[key]} " \
                                          "(a failing call must leave everything as it was)"


def one_line(exc):
    msg = str(exc)
    assert msg and "\n" not in msg, f"error messages are one line, got {msg!r}"
    return msg


def names(msg, *numbers):
    return all(re.search(rf"(?<![\d.]){n}(?![\d.])", msg) for n in numbers)


def expect_slot(a, seq, p):
    table = a.block_table(seq)
    return table[p // a.block_size] * a.block_size + p % a.block_size


# ---- scripted cases -----------------------------------------------------------------------------
def test_allocate_gives_distinct_blocks_and_a_copy_of_the_table(day):
    a = day.BlockAllocator(10, 4)
    assert a.num_free == 10 and a.num_blocks == 10 and a.block_size == 4
    assert list(a.ref_counts) == [0] * 10, f"a new allocator has every ref count 0, got {a.ref_counts}"
    t = a.allocate("a", 9)                     # 9 tokens, 4 per block -> 3 blocks
    assert len(t) == 3 and len(set(t)) == 3, f"allocate('a', 9) with block_size 4: expected 3 distinct blocks, got {t}"
    assert a.block_table("a") == t and a.length("a") == 9 and a.num_free == 7
    t.append(99)
    assert a.block_table("a") == t[:3], "allocate returns a copy: editing it must not change the allocator"
    a.block_table("a").append(99)
    assert len(a.block_table("a")) == 3, "block_table returns a copy: editing it must not change the allocator"
    u = a.allocate("b", 4)
    assert not set(t[:3]) & set(u), f"two sequences got the same block: {t[:3]} and {u}"
    assert all(a.ref_counts[b] == 1 for b in t[:3] + u), f"held blocks have ref count 1, got {a.ref_counts}"
    for p in range(9):
        assert a.slot("a", p) == expect_slot(a, "a", p), f"slot('a', {p}) must be table[p // 4] * 4 + p % 4"


def test_blocks_needed(day):
    a = day.BlockAllocator(4, 16)
    got = [a.blocks_needed(n) for n in (0, 1, 15, 16, 17, 32, 33)]
    assert got == [0, 1, 1, 1, 2, 2, 3], f"blocks_needed(0, 1, 15, 16, 17, 32, 33) with block_size 16: {got}"


def test_allocate_zero_tokens_then_append(day):
    a = day.BlockAllocator(3, 4)
    assert a.allocate(7, 0) == [] and a.length(7) == 0 and a.num_free == 3, \
        "allocate(seq, 0): an empty table, length 0, no block taken"
    s = a.append_slot(7)
    (b,) = a.block_table(7)
    assert s == b * 4 and a.length(7) == 1 and a.num_free == 2, \
        f"the first token of an empty sequence takes a block and lands at its offset 0: slot {s}, table {[b]}"


@pytest.mark.parametrize("block_size", [1, 4, 5])
def test_append_slot_at_block_boundaries(day, block_size):
    """A new block exactly when position n is a multiple of block_size -- never one token early or late."""
    bs = block_size
    a = day.BlockAllocator(12, bs)
    a.allocate("s", bs - 1)
    for n in range(bs - 1, 3 * bs + 1):
        free = a.num_free
        s = a.append_slot("s")
        opens = n % bs == 0
        assert a.num_free == free - opens, \
            f"block_size {bs}: appending token {n} must {'take a new block' if opens else 'not take a block'} " \
            f"(free {free} -> {a.num_free})"
        table = a.block_table("s")
        assert len(table) == a.blocks_needed(n + 1) and a.length("s") == n + 1
        assert s == table[n // bs] * bs + n % bs == a.slot("s", n), \
            f"block_size {bs}: token {n} returned slot {s}, expected block {table[n // bs]} offset {n % bs}"
    assert len(set(a.slot("s", p) for p in range(a.length("s")))) == a.length("s"), "slots of one sequence repeat"


def test_fork_shares_then_copies_on_write(day):
    a = day.BlockAllocator(8, 4)
    a.allocate("p", 6)                          # blocks [x, y], y half full
    x, y = a.block_table("p")
    free = a.num_free
    a.fork("p", "c")
    assert a.block_table("c") == [x, y] and a.length("c") == 6, "fork: the child gets the parent's table and length"
    assert a.num_free == free, "fork copies nothing: no block taken"
    assert a.ref_counts[x] == a.ref_counts[y] == 2, f"fork: each shared block has ref count 2, got {a.ref_counts}"
    assert a.take_copies() == [], "fork itself copies nothing"
    s = a.append_slot("c")                       # the child writes into shared y: copy first
    cx, cy = a.block_table("c")
    assert cx == x and cy not in (x, y), f"copy on write: the child's last block must be a fresh one, got {[cx, cy]}"
    assert a.block_table("p") == [x, y], "copy on write changes only the writer's table"
    assert s == cy * 4 + 2, f"the child's token 6 goes to its new block {cy} offset 2, got slot {s}"
    assert (a.ref_counts[x], a.ref_counts[y], a.ref_counts[cy]) == (2, 1, 1), \
        f"after the copy: x shared (2), y and the copy held once (1, 1), got {a.ref_counts}"
    assert a.take_copies() == [(y, cy)], "take_copies must return [(source, destination)] for the copy"
    assert a.take_copies() == [], "take_copies empties the list"
    a.append_slot("p")                           # y is the parent's alone now: no copy
    assert a.block_table("p") == [x, y] and a.take_copies() == [], "a block held once is written in place"


def test_fork_at_a_block_boundary_needs_no_copy(day):
    a = day.BlockAllocator(6, 4)
    a.allocate("p", 8)
    a.fork("p", "c")
    a.append_slot("c")
    assert a.take_copies() == [], "the child's token 8 starts a new block: the full shared ones are never copied"
    assert a.block_table("c")[:2] == a.block_table("p"), "the full blocks stay shared"


def test_free_returns_a_block_only_when_nobody_holds_it(day):
    a = day.BlockAllocator(6, 4)
    a.allocate("p", 5)
    a.fork("p", "c")
    table = a.block_table("p")
    a.free("p")
    assert a.num_free == 4, f"the child still holds both blocks: 4 of 6 free, got {a.num_free}"
    assert all(a.ref_counts[b] == 1 for b in table), f"ref counts after freeing the parent: {a.ref_counts}"
    assert a.block_table("c") == table and a.length("c") == 5
    a.allocate("q", 16)                          # all 4 free blocks: none may be one of the child's
    assert not set(a.block_table("q")) & set(table), "a block still held by the child was handed out again"
    a.free("c")
    a.free("q")
    assert a.num_free == 6 and list(a.ref_counts) == [0] * 6, "every block free after freeing everything"


def test_truncate_gives_back_the_end_of_a_sequence(day):
    """Day 35's rollback: a partly used block stays, the blocks past it go back to the pool, a
    block another sequence shares stays held, and growing again reuses the kept slots."""
    a = day.BlockAllocator(8, 4)
    t = a.allocate("s", 10)                      # 3 blocks: 4 + 4 + 2
    a.truncate("s", 10)
    assert (a.block_table("s"), a.length("s"), a.num_free) == (t, 10, 5), "truncate to the length changes nothing"
    a.truncate("s", 9)
    assert a.block_table("s") == t and a.length("s") == 9, \
        f"truncate to 9 of 10: the third block still holds position 8, table {a.block_table('s')}, expected {t}"
    a.truncate("s", 5)
    assert a.block_table("s") == t[:2] and a.length("s") == 5, \
        f"truncate to 5: keep blocks_needed(5) = 2 blocks {t[:2]}, length 5; got {a.block_table('s')}, {a.length('s')}"
    assert a.num_free == 6 and a.ref_counts[t[2]] == 0, \
        f"the third block goes back to the pool: 6 free and ref count 0, got {a.num_free} and {a.ref_counts[t[2]]}"
    assert a.append_slot("s") == t[1] * 4 + 1, "position 5 after a truncate to 5 is the same slot as before"
    a.truncate("s", 4)
    assert a.block_table("s") == t[:1] and a.num_free == 7, "truncate to 4: one full block, the second is free"
    a.fork("s", "c")                             # both hold t[0]
    a.truncate("c", 0)
    assert a.block_table("c") == [] and a.length("c") == 0, "truncate to 0 keeps the sequence, with no block"
    assert a.block_table("s") == t[:1] and a.ref_counts[t[0]] == 1 and a.num_free == 7, \
        f"a block the parent still holds stays held (ref count 1), got ref {a.ref_counts[t[0]]}, {a.num_free} free"
    for what, seq, n in (("past the length", "s", 5), ("a negative length", "s", -1), ("an unknown sequence", "gone", 0)):
        before = snapshot(a, ["s", "c"])
        with pytest.raises(ValueError) as e:
            a.truncate(seq, n)
            pytest.fail(f"truncate({seq!r}, {n}) ({what}) must raise ValueError")
        one_line(e.value)
        assert_unchanged(a, ["s", "c"], before, f"truncate({seq!r}, {n})")


@pytest.mark.parametrize("call", ["free", "append_slot", "slot", "block_table", "length", "fork", "truncate"])
def test_double_free_and_use_after_free(day, call):
    a = day.BlockAllocator(4, 2)
    a.allocate("x", 3)
    a.allocate("y", 2)
    a.free("x")
    before = snapshot(a, ["y"])
    args = {"slot": ("x", 0), "fork": ("x", "z"), "truncate": ("x", 0)}.get(call, ("x",))
    with pytest.raises(ValueError) as e:
        getattr(a, call)(*args)
        pytest.fail(f"{call}{args} after free('x') must raise ValueError")
    one_line(e.value)
    assert_unchanged(a, ["y"], before, f"{call}{args} on a freed sequence")


def test_misuse_raises_value_error(day):
    with pytest.raises(ValueError):
        day.BlockAllocator(0, 16)
    with pytest.raises(ValueError):
        day.BlockAllocator(4, 0)
    a = day.BlockAllocator(6, 2)
    a.allocate("x", 3)
    a.allocate("y", 1)
    a.allocate("e", 0)                           # allocated, no block: it exists all the same
    before = snapshot(a, ["x", "y", "e"])
    for what, call in [("allocate('x', 1): x exists", lambda: a.allocate("x", 1)),
                       ("allocate('e', 0) twice: e exists (with 0 tokens)", lambda: a.allocate("e", 0)),
                       ("fork('x', 'e'): e exists (with 0 tokens)", lambda: a.fork("x", "e")),
                       ("allocate('z', -1)", lambda: a.allocate("z", -1)),
                       ("fork('x', 'y'): y exists", lambda: a.fork("x", "y")),
                       ("slot('x', 3): length is 3", lambda: a.slot("x", 3)),
                       ("slot('x', -1)", lambda: a.slot("x", -1)),
                       ("free('never')", lambda: a.free("never"))]:
        with pytest.raises(ValueError) as e:
            call()
            pytest.fail(f"{what} must raise ValueError")
        one_line(e.value)
        assert_unchanged(a, ["x", "y", "e"], before, what)
    with pytest.raises(ValueError):
        a.length("z")                            # the failed allocate('z', -1) registered nothing


def test_out_of_blocks_changes_nothing(day):
    """OutOfBlocksError names what was asked for and what is free; every table, length, ref count
    and the free count stay as they were, and the blocks that were free are all still usable."""
    a = day.BlockAllocator(7, 4)
    a.allocate("a", 10)                          # 3 blocks
    a.allocate("b", 4)                           # 1 block, full
    a.fork("a", "c")                             # c shares a's half-full last block
    seqs = ["a", "b", "c"]
    before = snapshot(a, seqs)
    with pytest.raises(OutOfBlocksError) as e:
        a.allocate("big", 17)                    # 5 blocks, 3 free
    msg = one_line(e.value)
    assert isinstance(e.value, RuntimeError), "OutOfBlocksError (shared.engine.errors) is a RuntimeError"
    assert names(msg, 5, 3), f"the message must say 5 blocks were asked for and 3 are free, got {msg!r}"
    assert_unchanged(a, seqs, before, "allocate('big', 17)")
    with pytest.raises(ValueError):
        a.length("big")
        pytest.fail("a failed allocate must not register the sequence")
    a.allocate("d", 12)                          # exactly the 3 free blocks
    assert a.num_free == 0
    seqs.append("d")
    for what, call in [("append_slot('b') at a block boundary", lambda: a.append_slot("b")),
                       ("append_slot('c') into a shared block (copy on write)", lambda: a.append_slot("c")),
                       ("allocate('e', 1)", lambda: a.allocate("e", 1))]:
        before = snapshot(a, seqs)
        with pytest.raises(OutOfBlocksError) as e:
            call()
            pytest.fail(f"{what} with no free block must raise OutOfBlocksError")
        assert names(one_line(e.value), 1, 0), f"{what}: say that 1 block was asked for and 0 are free: {e.value}"
        assert_unchanged(a, seqs, before, what)
    assert a.take_copies() == [], "a copy on write that failed must not be recorded"
    a.free("d")
    a.append_slot("c")                           # now the copy fits
    assert len(a.take_copies()) == 1 and a.length("c") == 11


def test_uses_the_shared_error_class(day):
    a = day.BlockAllocator(1, 2)
    with pytest.raises(OutOfBlocksError):
        a.allocate(0, 3)
        pytest.fail("allocate(0, 3) needs 2 blocks of 1: raise shared.engine.errors.OutOfBlocksError")


# ---- the property test --------------------------------------------------------------------------
# Invariants after every step (your allocator `mine`, the reference `ref`, both fed the same calls):
#   1. lengths equal the model's; each table has blocks_needed(length) distinct blocks;
#   2. ref_counts[b] == the number of live tables holding b;
#   3. num_free + (distinct held blocks) == num_blocks, and num_free equals the reference's;
#   4. blocks are shared exactly where the reference shares them (a consistent one-to-one map
#      between your block ids and the reference's) -- so two sequences share a block only by fork;
#   5. slot(seq, p) == table[p // bs] * bs + p % bs, and a model KV pool (slot -> token written
#      there, copies applied from take_copies) holds every live sequence's tokens: no sequence
#      ever overwrote another's, with or without forks;
#   6. a call fails exactly when the reference's does, with the same error type, and a failing
#      call changes nothing.
try:
    from hypothesis import HealthCheck, settings, strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
except ImportError:                              # pragma: no cover - hypothesis is a course dependency
    RuleBasedStateMachine = None


def machine_for(day, num_blocks, block_size):
    bs = block_size

    class Allocators(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.mine = day.BlockAllocator(num_blocks, bs)
            self.ref = reference.BlockAllocator(num_blocks, bs)
            self.live: dict = {}                 # seq -> the tokens it holds (unique tags)
            self.pool: dict = {}                 # slot -> the tag written there
            self.dead: list = []
            self.count = 0

        def _new_id(self):
            self.count += 1
            return f"s{self.count}"

        def _pick(self, i):
            return sorted(self.live, key=lambda s: int(s[1:]))[i % len(self.live)]

        def _both(self, what, call):
            """Run call on both; they must fail alike, and a failure must change nothing of yours."""
            before = snapshot(self.mine, list(self.live))
            free = self.ref.num_free
            try:
                want = call(self.ref)
            except (ValueError, OutOfBlocksError) as e:
                want = e
            try:
                got = call(self.mine)
            except (ValueError, OutOfBlocksError) as e:
                one_line(e)
                assert isinstance(want, Exception), f"{what} raised {type(e).__name__}: {e}, but it should succeed " \
                                                    f"({free} blocks free)"
                assert type(e) is type(want), f"{what} raised {type(e).__name__}, expected {type(want).__name__}"
                assert_unchanged(self.mine, list(self.live), before, what)
                return e
            assert not isinstance(want, Exception), f"{what} must raise {type(want).__name__} ({want}), it returned {got}"
            return got

        def _write(self, seq, slot):
            tag = (seq, len(self.live[seq]))
            self.live[seq].append(tag)
            self.pool[slot] = tag

        def _apply_copies(self):
            mine, ref = self.mine.take_copies(), self.ref.take_copies()
            assert len(mine) == len(ref), f"take_copies returned {mine}, expected {len(ref)} copies"
            for src, dst in mine:
                assert self.mine.ref_counts[dst] >= 1, f"copy destination {dst} is not held by any sequence"
                for o in range(bs):
                    if src * bs + o in self.pool:
                        self.pool[dst * bs + o] = self.pool[src * bs + o]

        @rule(n=st.integers(0, 2 * bs + 1))
        def allocate(self, n):
            seq = self._new_id()
            got = self._both(f"allocate({seq!r}, {n})", lambda a: a.allocate(seq, n))
            if isinstance(got, OutOfBlocksError):
                assert names(str(got), self.ref.blocks_needed(n), self.ref.num_free), \
                    f"allocate({seq!r}, {n}): say {self.ref.blocks_needed(n)} blocks were asked for and " \
                    f"{self.ref.num_free} are free: {got}"
                return
            assert got == self.mine.block_table(seq), "allocate must return the new block table"
            self.live[seq] = []
            for p in range(n):
                self._write(seq, self.mine.slot(seq, p))

        @precondition(lambda self: self.live)
        @rule(picks=st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True))
        def append(self, picks):
            """A decode step: one token for each of a few sequences, then the step's copies."""
            writes = []
            for seq in dict.fromkeys(self._pick(i) for i in picks):
                slot = self._both(f"append_slot({seq!r})", lambda a: a.append_slot(seq))
                if not isinstance(slot, Exception):
                    n = self.mine.length(seq) - 1
                    assert slot == self.mine.slot(seq, n), f"append_slot({seq!r}) returned {slot}, but slot(.., {n}) " \
                                                           f"is {self.mine.slot(seq, n)}"
                    writes.append((seq, slot))
            self._apply_copies()
            for seq, slot in writes:
                self._write(seq, slot)

        @precondition(lambda self: self.live)
        @rule(i=st.integers(0, 7))
        def fork(self, i):
            parent, child = self._pick(i), self._new_id()
            self._both(f"fork({parent!r}, {child!r})", lambda a: a.fork(parent, child))
            self.live[child] = list(self.live[parent])

        @precondition(lambda self: self.live)
        @rule(i=st.integers(0, 7))
        def free(self, i):
            seq = self._pick(i)
            self._both(f"free({seq!r})", lambda a: a.free(seq))
            del self.live[seq]
            self.dead.append(seq)

        @precondition(lambda self: self.live)
        @rule(i=st.integers(0, 7), cut=st.integers(0, 2 * bs + 1))
        def truncate(self, i, cut):
            """Speculative decoding's rollback: keep the first length - cut tokens (< 0: an error)."""
            seq = self._pick(i)
            n = max(len(self.live[seq]) - cut, -1)
            if not isinstance(self._both(f"truncate({seq!r}, {n})", lambda a: a.truncate(seq, n)), Exception):
                del self.live[seq][n:]

        @precondition(lambda self: self.dead)
        @rule(i=st.integers(0, 7), call=st.sampled_from(["free", "append_slot", "slot", "fork", "length", "truncate"]))
        def use_after_free(self, i, call):
            seq = self.dead[i % len(self.dead)]
            args = {"slot": (seq, 0), "fork": (seq, "never"), "truncate": (seq, 0)}.get(call, (seq,))
            got = self._both(f"{call}{args} after free", lambda a: getattr(a, call)(*args))
            assert isinstance(got, ValueError), f"{call}{args} after free({seq!r}) must raise ValueError"

        @invariant()
        def tables_refs_free_count_and_contents(self):
            mine, ref = self.mine, self.ref
            holders: dict = {}
            to_ref: dict = {}
            for seq, tokens in self.live.items():
                table, n = mine.block_table(seq), mine.length(seq)
                assert n == len(tokens) == ref.length(seq), f"length({seq!r}) is {n}, expected {len(tokens)}"
                assert len(table) == mine.blocks_needed(n), \
                    f"{seq!r} holds {n} tokens in {len(table)} blocks {table}; expected {mine.blocks_needed(n)}"
                assert len(set(table)) == len(table), f"{seq!r}'s table {table} holds a block twice"
                for b, rb in zip(table, ref.block_table(seq)):
                    assert 0 <= b < num_blocks, f"{seq!r}'s table {table} has a block id outside 0..{num_blocks - 1}"
                    holders[b] = holders.get(b, 0) + 1
                    assert to_ref.setdefault(b, rb) == rb, \
                        f"block {b} is shared by sequences that do not share a block in the reference " \
                        "(only fork shares blocks; a write into a shared block copies it first)"
                for p, tag in enumerate(tokens):
                    s = mine.slot(seq, p)
                    assert s == table[p // bs] * bs + p % bs, f"slot({seq!r}, {p}) = {s} does not match its table {table}"
                    assert self.pool.get(s) == tag, \
                        f"{seq!r} position {p}: its slot {s} holds {self.pool.get(s)}, not its own token {tag} " \
                        "(another sequence wrote into a block it still holds)"
            assert len(set(to_ref.values())) == len(to_ref), "two of your blocks stand for one block of the reference"
            refs = list(mine.ref_counts)
            for b in range(num_blocks):
                assert refs[b] == holders.get(b, 0), \
                    f"ref_counts[{b}] is {refs[b]} but {holders.get(b, 0)} live tables hold block {b}"
            assert mine.num_free + len(holders) == num_blocks, \
                f"num_free {mine.num_free} + {len(holders)} held blocks != num_blocks {num_blocks} " \
                "(a block leaked, or a held block is also on the free list)"
            assert mine.num_free == ref.num_free, f"num_free {mine.num_free}, expected {ref.num_free}"

    return Allocators


@pytest.mark.parametrize("num_blocks,block_size", [(6, 3), (9, 2), (4, 1)])
def test_random_sequences_keep_every_invariant(day, num_blocks, block_size):
    if RuleBasedStateMachine is None:
        pytest.fail("day 28's property test needs hypothesis: pip install hypothesis")
    run_state_machine_as_test(
        machine_for(day, num_blocks, block_size),
        settings=settings(max_examples=150, stateful_step_count=30, derandomize=True, database=None,
                          deadline=None, print_blob=False, report_multiple_bugs=False, suppress_health_check=list(HealthCheck)))
