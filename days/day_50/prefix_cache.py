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
        # TODO(day 50): day 28's state (super().__init__), then: cached = {} (block id -> CachedBlock), hash_to_block = {},
        #   evictable = an OrderedDict of block ids (oldest first), chains = {} and tokens = {} (per sequence),
        #   pinned = [] (copy sources held until take_copies), next_serial = 1.
        raise NotImplementedError("Day 50: PrefixCache.__init__ is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    # ---- the hash ------------------------------------------------------------------------------------
    def hash_block(self, parent_hash: int, token_ids: tuple) -> int:
        """The chained hash of a full block. Python's hash of a tuple of ints is fast and the same
        in every process (PYTHONHASHSEED salts only str and bytes). It need not resist collisions:
        a hit is checked token by token, so a collision costs a miss, never wrong KV (vLLM shares
        blocks across processes with sha256; here it is one dict lookup per block)."""
        # TODO(day 50): one line: Python's hash of the pair (parent_hash, token_ids).
        raise NotImplementedError("Day 50: PrefixCache.hash_block is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    # ---- counts --------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks a sequence can take: on the free list, or cached and held by nobody (evictable)."""
        # TODO(day 50): the free list plus the evictable blocks (both have ref count 0).
        raise NotImplementedError("Day 50: PrefixCache.num_free is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    @property
    def num_cached_blocks(self) -> int:
        """Blocks whose KV can be found again by a prompt, held by a sequence or not."""
        # TODO(day 50): how many blocks `cached` holds.
        raise NotImplementedError("Day 50: PrefixCache.num_cached_blocks is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    # ---- taking and giving back ----------------------------------------------------------------------
    def _take(self, n: int, why: str) -> list[int]:
        """Day 28's _take, but the free list is refilled from the evictable blocks, least recently
        used first, only when it is too short: a cached block is given up only when it must be."""
        # TODO(day 50): check first (OutOfBlocksError, one line, if n > num_free); then, only while the free list is
        #   shorter than n, pop the OLDEST evictable block, forget it and put it on the free list; then day 28's _take.
        raise NotImplementedError("Day 50: PrefixCache._take is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def _forget(self, b: int) -> None:
        """Block b no longer caches anything: no prompt finds it again."""
        # TODO(day 50): drop b from `cached`; drop its hash from hash_to_block only if the hash still points at b.
        raise NotImplementedError("Day 50: PrefixCache._forget is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def _hold(self, b: int) -> None:
        """One more holder of cached block b; one that was evictable is not any more."""
        # TODO(day 50): ref count + 1; b is not evictable any more.
        raise NotImplementedError("Day 50: PrefixCache._hold is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def _park(self, blocks) -> None:
        """Cached blocks that just reached ref count 0 leave the free list for the evictable ones.
        A sequence's last blocks are parked first, so they are evicted first: a later block is no
        use without the blocks before it."""
        # TODO(day 50): walk the blocks from the LAST one back: a cached block whose ref count is 0 moves from
        #   the free list to the (newest) end of evictable.
        raise NotImplementedError("Day 50: PrefixCache._park is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    # ---- matching and caching ------------------------------------------------------------------------
    def _match(self, tokens: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """The cached blocks holding the prompt's first full blocks, and their (hash, serial).
        A candidate is accepted only if it holds this block's token ids AND follows the block just
        matched (its parent serial): by induction the whole prefix is equal, whatever collides."""
        # TODO(day 50): h = -1, parent = 0; for each FULL block of the prompt: h = hash_block(h, its ids); the
        #   candidate is cached[hash_to_block[h]]. Stop at the first miss, or at a candidate whose token_ids or parent
        #   differ (a collision). Else record the block and (h, serial), and parent = its serial.
        raise NotImplementedError("Day 50: PrefixCache._match is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def _register(self, seq_id) -> None:
        """Cache the sequence's full blocks that are not cached yet, in order. A hash already taken
        by another block ends the chain: this sequence caches nothing more."""
        # TODO(day 50): nothing if the sequence's chain or tokens are None. While the chain is shorter than its full
        #   blocks: hash the next block from the chain's last hash (-1 for the first); a hash already in hash_to_block
        #   sets the chain to None and stops; else cache table[i] as CachedBlock(h, parent serial or 0, ids, next serial).
        raise NotImplementedError("Day 50: PrefixCache._register is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def allocate_prompt(self, seq_id, token_ids) -> int:
        """A new sequence holding its prompt, sharing the cached blocks of its longest cached
        prefix of full blocks. Returns how many prompt tokens are cached already: the prefill
        computes (and writes) only the tokens after them. The prompt's other full blocks are
        cached from now on -- the caller prefills them before anything reads them.

        A prompt cached to its last token still feeds that token (its logits are the next token),
        so it reports len - 1 and the shared last block is copied first (see take_copies).
        ValueError if seq_id is allocated already; OutOfBlocksError with nothing changed."""
        # TODO(day 50): ValueError if seq_id is allocated. Match; full_hit = a non-empty prompt whose every block hit.
        #   need = blocks_needed(n) - hits + full_hit. Check need against num_free minus the hits that are evictable
        #   BEFORE changing anything. Hold the hits, take need blocks; on a full hit the last hit becomes a copy source
        #   (pinned, one (src, fresh) copy) and fresh takes its place in the table. Record table, length, tokens, chain;
        #   register the new full blocks; return cached tokens (minus 1 on a full hit).
        raise NotImplementedError("Day 50: PrefixCache.allocate_prompt is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    # ---- day 28's methods, kept consistent with the cache ---------------------------------------------
    def append_slot(self, seq_id, token_id: int | None = None) -> int:
        """Day 28's append_slot; with the token id, the block it fills is cached. A cached block is
        never written: a shared one is copied (day 28), one held only here stops being cached."""
        # TODO(day 50): if position n lands inside a last block that is cached and held only here, forget it
        #   first (a cached block is never written). Then day 28's append_slot. For a sequence whose tokens are known:
        #   no token_id -> tokens and chain become None; else append the token and register.
        raise NotImplementedError("Day 50: PrefixCache.append_slot is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def fork(self, parent_id, child_id) -> None:
        """Day 28's fork; the child knows the parent's tokens and cached chain, so it caches on."""
        # TODO(day 50): day 28's fork; the child gets copies of the parent's tokens and chain (or None).
        raise NotImplementedError("Day 50: PrefixCache.fork is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def free(self, seq_id) -> None:
        """Day 28's free; the cached blocks nobody holds now stay cached, as evictable."""
        # TODO(day 50): day 28's free, then park the sequence's blocks; drop its tokens and chain.
        raise NotImplementedError("Day 50: PrefixCache.free is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def truncate(self, seq_id, length: int) -> None:
        """Day 28's truncate; the blocks it lets go that are cached stay cached, as evictable."""
        # TODO(day 50): day 28's truncate, then park the blocks it let go; cut the tokens to length and the chain to
        #   length // block_size full blocks.
        raise NotImplementedError("Day 50: PrefixCache.truncate is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")

    def take_copies(self) -> list[tuple[int, int]]:
        """Day 28's take_copies; the sources held for them are let go (the caller copies now)."""
        # TODO(day 50): day 28's take_copies; then let go of every pinned block (ref count - 1; at 0 it is evictable).
        raise NotImplementedError("Day 50: PrefixCache.take_copies is not written yet -- edit days/day_50/prefix_cache.py "
                                  "(lesson: notes/day_50_prefix_cache.md)")
