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
        backend = runner.backend
        if max_k < 0:
            raise ValueError(f"max_k must be >= 0 (the most drafted tokens one verify scores), got {max_k}")
        self.paged = hasattr(backend, "block_tables")
        if not self.paged and not hasattr(backend, "cache_len"):
            raise ValueError(f"verify needs a KV cache (a StaticCache or a PagedCache), not {type(backend).__name__}")
        self.runner, self.max_k = runner, max_k
        n, dev = max_k + 1, runner.device
        self.ids = torch.zeros(n, dtype=torch.int32, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int32, device=dev)
        self.steps = torch.arange(n, dtype=torch.int32, device=dev)       # 0, 1, ..., max_k
        self.lens = torch.zeros(n, dtype=torch.int32, device=dev)         # keys row i may see
        self.tables = (torch.zeros((n, backend.block_tables.shape[1]), dtype=torch.int32, device=dev)
                       if self.paged else None)
        self.graphs = graphs_cls(self._step, max_len=backend.max_len) if graphs_cls is not None else None

    def __call__(self, tokens: list[int], start: int) -> torch.Tensor:
        tokens = list(tokens)
        T, backend = len(tokens), self.runner.backend
        if not 1 <= T <= self.max_k + 1:
            raise ValueError(f"verify takes 1..{self.max_k + 1} tokens (the last accepted one + up to max_k="
                             f"{self.max_k} drafts), got {T}")
        if not 1 <= start <= self.runner.cached:
            raise ValueError(f"verify starts on top of the cache: start must be in 1..{self.runner.cached} "
                             f"(the tokens it holds), got {start}")
        if start + T > backend.max_len:
            raise ValueError(f"positions {start}..{start + T - 1} do not fit a cache of {backend.max_len} tokens")
        check_ids(tokens, self.runner.weights.config.vocab_size)
        # host values into the fixed buffers, before the step (eager or replayed) reads them
        self.ids[:T].copy_(torch.tensor(tokens, dtype=torch.int32), non_blocking=True)
        torch.add(self.steps[:T], start, out=self.positions[:T])
        backend.prepare(start, T)                  # room for start..start+T-1; the cache's length is start + T
        self.runner.cached = start + T
        if self.graphs is not None:
            return self.graphs.run(T, start + T)
        return self._step(T)

    def _step(self, T: int, bucket: int | None = None) -> torch.Tensor:
        """The forward of ids[:T] at positions[:T] -> logits [T, vocab]. Reads only fixed buffers
        and the backend's (what a graph captures); running it twice changes nothing."""
        backend, ops = self.runner.backend, self.runner.ops
        length = backend.context_lens if self.paged else backend.cache_len   # start + T, on the device
        torch.add(self.steps[:T], length, out=self.lens[:T])
        self.lens[:T].sub_(T - 1)                  # row i sees start + i + 1 keys: itself and before
        if self.paged:                             # every row reads the sequence's one block table
            self.tables[:T].copy_(backend.block_tables.expand(T, -1))
        with torch.inference_mode():
            return ops.forward(self.runner.weights, self.ids[:T], self.positions[:T], ops, self._attend,
                               logits_at=slice(None))

    def _attend(self, layer, q, k, v, positions):
        """Write the T tokens' K/V, then attend as T decode queries, row i over lens[i] keys."""
        backend, ops, T = self.runner.backend, self.runner.ops, q.shape[0]
        if self.paged:
            kp, vp = backend.k[layer], backend.v[layer]
            ops.paged_kv_write(kp, vp, k, v, backend.slot_mapping[:T])
            return ops.paged_decode_attention(q, kp, vp, self.tables[:T], self.lens[:T])
        kc, vc = backend.kv.k[layer], backend.kv.v[layer]
        ops.kv_write(kc, vc, k, v, positions)
        return torch.stack([ops.decode_attention(q[i], kc, vc, self.lens[i:i + 1]) for i in range(T)])


def verify(runner, tokens: list[int], start: int) -> torch.Tensor:
    """One verify pass, eagerly: fp32 logits [len(tokens), vocab] for tokens at positions
    start..start+len(tokens)-1 on top of the runner's cache (see Verifier)."""
    return Verifier(runner, max_k=max(len(tokens) - 1, 0))(tokens, start)
