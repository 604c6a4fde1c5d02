"""Day 33 -- the verify pass: score K drafted tokens with one forward of the target on its cache.

Lesson: notes/day_33_verify.md        Check: pytest checkers/day_33

Speculative decoding (day 35) guesses K tokens cheaply, then asks the target model about all of
them at once: it feeds the last accepted token and the K drafts, K + 1 tokens at positions
start..start+K, on top of the cache. Row i of the logits is what a decode step would have said
after tokens[i]: the target's own next token there, to compare with draft i + 1.

One forward instead of K + 1 steps: the weights are read once for K + 1 tokens, and a decode
step's time is mostly reading the weights. Each query row i is a decode query that sees the
cache up to its own position: start + i + 1 keys. That length is computed on the device, so the
same captured CUDA graph replays at every start (the backend's host-sliced chunk path would
freeze the length of the step it was captured at).
"""
from __future__ import annotations

import torch

from shared.engine.runner import check_ids


class Verifier:
    """verifier(tokens, start) -> fp32 logits [len(tokens), vocab] from one forward on the cache.

    The runner's backend (a StaticCache or a PagedCache) holds `start` tokens; tokens = the last
    accepted token + K drafts (1 <= len(tokens) <= max_k + 1). Their K/V are written at
    positions start..start+K, the backend then holds start + K + 1 tokens and runner.cached says
    so. Fixed device buffers (ids, positions, per-row lengths; paged: per-row block tables) are
    allocated once; with graphs_cls (day 23's DecodeGraphs) the forward is one graph per
    (K + 1, length bucket). The returned tensor may be overwritten by the next call.
    """

    def __init__(self, runner, *, max_k: int = 16, graphs_cls=None):
        # TODO(day 33): one-line ValueError if max_k < 0, or if the backend is neither paged (it has
        #   block_tables) nor static (it has cache_len) -- e.g. NoCache. Keep runner and max_k.
        #   Allocate once, int32 on runner.device, max_k + 1 entries each: ids, positions, steps
        #   (0, 1, ..., max_k), lens; paged: tables [max_k + 1, block_tables.shape[1]].
        #   graphs_cls given: self.graphs = graphs_cls(self._step, max_len=backend.max_len), else None.
        raise NotImplementedError("Day 33: Verifier.__init__ is not written yet -- edit days/day_33/verify.py "
                                  "(lesson: notes/day_33_verify.md)")

    def __call__(self, tokens: list[int], start: int) -> torch.Tensor:
        # TODO(day 33): T = len(tokens). One-line ValueError, before anything changes, unless
        #   1 <= T <= max_k + 1, 1 <= start <= runner.cached and start + T <= backend.max_len; then
        #   check_ids(tokens, vocab_size). Host values into the fixed buffers: ids[:T] from a CPU
        #   tensor (copy_(..., non_blocking=True)), positions[:T] = steps[:T] + start (torch.add with
        #   out=). backend.prepare(start, T); runner.cached = start + T. Then replay
        #   graphs.run(T, start + T) -- keyed by T -- or run self._step(T) eagerly.
        raise NotImplementedError("Day 33: Verifier.__call__ is not written yet -- edit days/day_33/verify.py "
                                  "(lesson: notes/day_33_verify.md)")

    def _step(self, T: int, bucket: int | None = None) -> torch.Tensor:
        """The forward of ids[:T] at positions[:T] -> logits [T, vocab]. Reads only fixed buffers
        and the backend's (what a graph captures); running it twice changes nothing."""
        # TODO(day 33): lens[:T] = the cache's device length (paged: context_lens, static: cache_len,
        #   both start + T after prepare) + steps[:T] - (T - 1), with out= / in-place ops only.
        #   Paged: copy the sequence's block table (block_tables, [1, n]) into all T rows of tables.
        #   Under torch.inference_mode(): ops.forward(weights, ids[:T], positions[:T], ops,
        #   self._attend, logits_at=...) -- every one of the T rows.
        raise NotImplementedError("Day 33: Verifier._step is not written yet -- edit days/day_33/verify.py "
                                  "(lesson: notes/day_33_verify.md)")

    def _attend(self, layer, q, k, v, positions):
        """Write the T tokens' K/V, then attend as T decode queries, row i over lens[i] keys."""
        # TODO(day 33): T = q.shape[0]. Paged: ops.paged_kv_write(k pool, v pool of this layer, k, v,
        #   backend.slot_mapping[:T]), then one ops.paged_decode_attention(q, pools, tables[:T],
        #   lens[:T]). Static: ops.kv_write(kv.k[layer], kv.v[layer], k, v, positions), then
        #   ops.decode_attention(q[i], ..., lens[i:i + 1]) for each row, stacked to [T, H, hd].
        raise NotImplementedError("Day 33: Verifier._attend is not written yet -- edit days/day_33/verify.py "
                                  "(lesson: notes/day_33_verify.md)")


def verify(runner, tokens: list[int], start: int) -> torch.Tensor:
    """One verify pass, eagerly: fp32 logits [len(tokens), vocab] for tokens at positions
    start..start+len(tokens)-1 on top of the runner's cache (see Verifier)."""
    # TODO(day 33): a Verifier with max_k = max(len(tokens) - 1, 0), called once.
    raise NotImplementedError("Day 33: verify is not written yet -- edit days/day_33/verify.py "
                              "(lesson: notes/day_33_verify.md)")
