"""Day 50 -- prefix sharing: full KV blocks found again by a chained hash, shared by ref count.

Lesson: notes/day_50_prefix_cache.md        Check: pytest checkers/day_50

Many requests start with the same tokens (a system prompt, a few-shot preamble, the earlier turns
of a chat). Their KV is the same too, because the KV of position p depends only on tokens 0..p.
So a full block of KV can be kept after its sequence ends, found again by what it holds, and
shared by every later sequence whose prompt starts the same way: that part of the prompt is not
prefilled again.

A full block is named by a chained hash, hash(parent block's hash, this block's token ids): one
dict lookup per block finds a candidate for "these block_size tokens after that exact prefix".
A hash only finds candidates: a candidate is taken when its token ids and its parent are the
ones just matched (see `_match`), so a hash collision can cost a miss, never wrong KV.

Built on day 28's BlockAllocator: its ref counts, fork, copy on write (`take_copies`) and
truncate are used as they are (through super(), and its free_blocks, tables, lengths, copies).
What is added is the cache: which block holds which tokens, and the *evictable* blocks -- cached,
held by no sequence (ref count 0), kept off the free list until the free list runs dry, then
given up least recently used first.

Host-side Python: no kernel. Every method either succeeds or raises with nothing changed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from shared.engine.errors import OutOfBlocksError

from ..day_28 import BlockAllocator


@dataclass(frozen=True)
class CachedBlock:
    """What a cached block holds. `serial` is a number no other cached block ever gets (not even a
    later one in the same physical block), so `parent == serial of the block before` identifies
    the parent exactly, where a block id (reused after eviction) or a hash (may collide) would not."""
    hash: int
    parent: int              # serial of the cached block before it; 0 for a sequence's first block
    token_ids: tuple
    serial: int


class PrefixCache(BlockAllocator):
    """A BlockAllocator whose full blocks outlive their sequences and are shared by prompt prefix.

    Public state (the checker reads it): day 28's num_blocks, block_size, ref_counts; num_free
    (free + evictable blocks: both have ref count 0, and taking one may evict a cached block);
    num_cached_blocks; cached, a dict block id -> CachedBlock.
    """

    def __init__(self, num_blocks: int, block_size: int):
        super().__init__(num_blocks, block_size)
        self.cached: dict[int, CachedBlock] = {}     # block id -> what it holds
        self.hash_to_block: dict[int, int] = {}
        self.evictable: OrderedDict[int, None] = OrderedDict()   # cached, ref count 0; oldest first
        self.chains: dict = {}     # seq_id -> [(hash, serial)] of its first cached full blocks, or None
        self.tokens: dict = {}     # seq_id -> its token ids, when known
        self.pinned: list[int] = []   # copy sources, held until take_copies hands the copies out
        self.next_serial = 1

    # ---- the hash ------------------------------------------------------------------------------------
    def hash_block(self, parent_hash: int, token_ids: tuple) -> int:
        """The chained hash of a full block. Python's hash of a tuple of ints is fast and the same
        in every process (PYTHONHASHSEED salts only str and bytes). It need not resist collisions:
        a hit is checked token by token, so a collision costs a miss, never wrong KV (vLLM shares
        blocks across processes with sha256; here it is one dict lookup per block)."""
        return hash((parent_hash, token_ids))

    # ---- counts --------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks a sequence can take: on the free list, or cached and held by nobody (evictable)."""
        return len(self.free_blocks) + len(self.evictable)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks whose KV can be found again by a prompt, held by a sequence or not."""
        return len(self.cached)

    # ---- taking and giving back ----------------------------------------------------------------------
    def _take(self, n: int, why: str) -> list[int]:
        """Day 28's _take, but the free list is refilled from the evictable blocks, least recently
        used first, only when it is too short: a cached block is given up only when it must be."""
        if n > self.num_free:
            raise OutOfBlocksError(f"{why} needs {n} free KV blocks but only {self.num_free} of {self.num_blocks} "
                                   "are free or evictable: free a sequence or give the cache more blocks")
        while len(self.free_blocks) < n:
            b, _ = self.evictable.popitem(last=False)
            self._forget(b)
            self.free_blocks.append(b)
        return super()._take(n, why)

    def _forget(self, b: int) -> None:
        """Block b no longer caches anything: no prompt finds it again."""
        entry = self.cached.pop(b)
        if self.hash_to_block.get(entry.hash) == b:
            del self.hash_to_block[entry.hash]

    def _hold(self, b: int) -> None:
        """One more holder of cached block b; one that was evictable is not any more."""
        self.ref_counts[b] += 1
        self.evictable.pop(b, None)

    def _park(self, blocks) -> None:
        """Cached blocks that just reached ref count 0 leave the free list for the evictable ones.
        A sequence's last blocks are parked first, so they are evicted first: a later block is no
        use without the blocks before it."""
        for b in reversed(blocks):
            if self.ref_counts[b] == 0 and b in self.cached:
                self.free_blocks.remove(b)
                self.evictable[b] = None

    # ---- matching and caching ------------------------------------------------------------------------
    def _match(self, tokens: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """The cached blocks holding the prompt's first full blocks, and their (hash, serial).
        A candidate is accepted only if it holds this block's token ids AND follows the block just
        matched (its parent serial): by induction the whole prefix is equal, whatever collides."""
        bs, hits, chain = self.block_size, [], []
        h, parent = -1, 0
        for i in range(len(tokens) // bs):
            ids = tuple(tokens[i * bs:(i + 1) * bs])
            h = self.hash_block(h, ids)
            entry = self.cached.get(self.hash_to_block.get(h, -1))
            if entry is None or entry.token_ids != ids or entry.parent != parent:
                break                    # a miss or a collision: nothing after it can be shared
            hits.append(self.hash_to_block[h])
            chain.append((h, entry.serial))
            parent = entry.serial
        return hits, chain

    def _register(self, seq_id) -> None:
        """Cache the sequence's full blocks that are not cached yet, in order. A hash already taken
        by another block ends the chain: this sequence caches nothing more."""
        chain, tokens = self.chains.get(seq_id), self.tokens.get(seq_id)
        if chain is None or tokens is None:
            return
        bs, table = self.block_size, self.tables[seq_id]
        while len(chain) < self.lengths[seq_id] // bs:
            i = len(chain)
            ids = tuple(tokens[i * bs:(i + 1) * bs])
            h = self.hash_block(chain[-1][0] if chain else -1, ids)
            if h in self.hash_to_block:
                self.chains[seq_id] = None
                return
            entry = CachedBlock(h, chain[-1][1] if chain else 0, ids, self.next_serial)
            self.next_serial += 1
            self.cached[table[i]], self.hash_to_block[h] = entry, table[i]
            chain.append((h, entry.serial))

    def allocate_prompt(self, seq_id, token_ids) -> int:
        """A new sequence holding its prompt, sharing the cached blocks of its longest cached
        prefix of full blocks. Returns how many prompt tokens are cached already: the prefill
        computes (and writes) only the tokens after them. The prompt's other full blocks are
        cached from now on -- the caller prefills them before anything reads them.

        A prompt cached to its last token still feeds that token (its logits are the next token),
        so it reports len - 1 and the shared last block is copied first (see take_copies).
        ValueError if seq_id is allocated already; OutOfBlocksError with nothing changed."""
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id!r} is allocated already: free it first")
        tokens = [int(t) for t in token_ids]
        n, bs = len(tokens), self.block_size
        hits, chain = self._match(tokens)
        full_hit = n > 0 and len(hits) * bs == n
        need = self.blocks_needed(n) - len(hits) + full_hit
        idle = sum(self.ref_counts[b] == 0 for b in hits)      # evictable hits are not there to take
        if need > self.num_free - idle:
            raise OutOfBlocksError(f"a prompt of {n} tokens ({len(hits)} blocks cached) needs {need} free KV blocks "
                                   f"but only {self.num_free - idle} of {self.num_blocks} are free or evictable: "
                                   "free a sequence or give the cache more blocks")
        for b in hits:
            self._hold(b)
        fresh = self._take(need, f"a prompt of {n} tokens")
        if full_hit:                     # the last token is written again: into a copy, never the shared block
            src = hits.pop()
            self.pinned.append(src)      # keeps src's hold until the copy is made
            self.copies.append((src, fresh[0]))
        self.tables[seq_id], self.lengths[seq_id] = hits + fresh, n
        self.tokens[seq_id], self.chains[seq_id] = tokens, chain
        cached = len(chain) * bs - full_hit          # before _register extends the chain
        self._register(seq_id)
        return cached

    # ---- day 28's methods, kept consistent with the cache ---------------------------------------------
    def append_slot(self, seq_id, token_id: int | None = None) -> int:
        """Day 28's append_slot; with the token id, the block it fills is cached. A cached block is
        never written: a shared one is copied (day 28), one held only here stops being cached."""
        self._known(seq_id)
        n, table = self.lengths[seq_id], self.tables[seq_id]
        if n % self.block_size and table[-1] in self.cached and self.ref_counts[table[-1]] == 1:
            self._forget(table[-1])      # after a truncate: the block is this sequence's alone again
        slot = super().append_slot(seq_id)
        if self.tokens.get(seq_id) is not None:
            if token_id is None:         # the tokens are not known any more: stop caching this sequence
                self.tokens[seq_id] = self.chains[seq_id] = None
            else:
                self.tokens[seq_id].append(int(token_id))
                self._register(seq_id)
        return slot

    def fork(self, parent_id, child_id) -> None:
        """Day 28's fork; the child knows the parent's tokens and cached chain, so it caches on."""
        super().fork(parent_id, child_id)
        tokens, chain = self.tokens.get(parent_id), self.chains.get(parent_id)
        self.tokens[child_id] = None if tokens is None else list(tokens)
        self.chains[child_id] = None if chain is None else list(chain)

    def free(self, seq_id) -> None:
        """Day 28's free; the cached blocks nobody holds now stay cached, as evictable."""
        self._known(seq_id)
        blocks = self.tables[seq_id]
        super().free(seq_id)
        self._park(blocks)
        self.tokens.pop(seq_id, None)
        self.chains.pop(seq_id, None)

    def truncate(self, seq_id, length: int) -> None:
        """Day 28's truncate; the blocks it lets go that are cached stay cached, as evictable."""
        self._known(seq_id)
        blocks = list(self.tables[seq_id])
        super().truncate(seq_id, length)
        self._park(blocks[len(self.tables[seq_id]):])
        if self.tokens.get(seq_id) is not None:
            del self.tokens[seq_id][length:]
        if self.chains.get(seq_id) is not None:
            del self.chains[seq_id][length // self.block_size:]

    def take_copies(self) -> list[tuple[int, int]]:
        """Day 28's take_copies; the sources held for them are let go (the caller copies now)."""
        copies = super().take_copies()
        for b in self.pinned:
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.evictable[b] = None     # a pinned block stays cached: nothing writes or evicts it
        self.pinned = []
        return copies
