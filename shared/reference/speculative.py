"""Reference for days 33-35: the verify pass (`verify`, `Verifier`), n-gram prompt lookup
(`ngram_draft`) and the greedy speculative loop (`speculative`). Same names and signatures as the
days; the learner's days replace them through the registry once finished."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from shared.engine.runner import check_ids


class Verifier:
    """verifier(tokens, start) -> fp32 logits [len(tokens), vocab]: tokens (the last accepted one
    + K drafts) at positions start..start+K in one forward on top of the runner's cache (static
    or paged). Row i attends like a decode step over start + i + 1 keys, a length computed on
    the device, so one graph per (K + 1, bucket) replays at any start. The cache then holds
    start + K + 1 tokens and runner.cached says so."""

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
        self.steps = torch.arange(n, dtype=torch.int32, device=dev)
        self.lens = torch.zeros(n, dtype=torch.int32, device=dev)
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
        self.ids[:T].copy_(torch.tensor(tokens, dtype=torch.int32), non_blocking=True)
        torch.add(self.steps[:T], start, out=self.positions[:T])
        backend.prepare(start, T)
        self.runner.cached = start + T
        if self.graphs is not None:
            return self.graphs.run(T, start + T)
        return self._step(T)

    def _step(self, T: int, bucket: int | None = None) -> torch.Tensor:
        backend, ops = self.runner.backend, self.runner.ops
        length = backend.context_lens if self.paged else backend.cache_len
        torch.add(self.steps[:T], length, out=self.lens[:T])
        self.lens[:T].sub_(T - 1)
        if self.paged:
            self.tables[:T].copy_(backend.block_tables.expand(T, -1))
        with torch.inference_mode():
            return ops.forward(self.runner.weights, self.ids[:T], self.positions[:T], ops, self._attend,
                               logits_at=slice(None))

    def _attend(self, layer, q, k, v, positions):
        backend, ops, T = self.runner.backend, self.runner.ops, q.shape[0]
        if self.paged:
            kp, vp = backend.k[layer], backend.v[layer]
            ops.paged_kv_write(kp, vp, k, v, backend.slot_mapping[:T])
            return ops.paged_decode_attention(q, kp, vp, self.tables[:T], self.lens[:T])
        kc, vc = backend.kv.k[layer], backend.kv.v[layer]
        ops.kv_write(kc, vc, k, v, positions)
        return torch.stack([ops.decode_attention(q[i], kc, vc, self.lens[i:i + 1]) for i in range(T)])


def verify(runner, tokens: list[int], start: int) -> torch.Tensor:
    """One verify pass, eagerly (see Verifier)."""
    return Verifier(runner, max_k=max(len(tokens) - 1, 0))(tokens, start)


def ngram_draft(tokens: list[int], k: int, n: int = 3, min_n: int = 1) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the context's last m tokens,
    m from n down to min_n (the longest that occurs); [] when none does. An occurrence starts
    before the suffix (overlap allowed); the proposal is never padded."""
    if k < 0:
        raise ValueError(f"k (how many tokens to draft) must be >= 0, got {k}")
    if n < 1 or not 1 <= min_n <= n:
        raise ValueError(f"the n-gram lengths need 1 <= min_n <= n, got n={n}, min_n={min_n}")
    tokens = list(tokens)
    L = len(tokens)
    for m in range(min(n, L - 1), min_n - 1, -1):
        suffix = tokens[L - m:]
        for i in range(L - m - 1, -1, -1):
            if tokens[i:i + m] == suffix:
                return tokens[i + m:i + m + k]
    return []


def speculative(runner, prompt_ids: list[int], *, verify: Callable[[list[int], int], torch.Tensor],
                draft: Callable[[list[int], int], list[int]], k: int, max_new_tokens: int,
                eos_token_ids: Iterable[int] = (), greedy: Callable[[torch.Tensor], torch.Tensor] | None = None,
                stats=None) -> Iterator[int]:
    """Yield plain greedy decoding's tokens (EOS included, as generate does), up to k + 1 per target
    forward. Each round: draft(context, n) proposes up to n tokens; verify([newest] + drafts, start)
    scores them in one forward on the runner's cache; the drafts equal to the target's own picks
    (a prefix) are kept plus the target's token after them; the cache is rolled back to what was
    kept. Never emits past EOS or max_new_tokens, even inside a run of accepted drafts. stats: an
    object whose steps, drafted and accepted counters grow by 1, len(drafts), accepted per verify."""
    if k < 0:
        raise ValueError(f"k (tokens drafted per target step) must be >= 0, got {k}")
    pick = greedy or (lambda logits: torch.argmax(logits, dim=-1))
    eos = set(eos_token_ids)
    if max_new_tokens < 1:
        return
    runner.reset()
    context = list(prompt_ids)
    new = [int(pick(runner.next_logits(context)[None])[0])]     # the prefill: the cache holds the prompt
    while True:
        yield from new
        context += new
        done = len(context) - len(prompt_ids)
        if new[-1] in eos or done >= max_new_tokens:
            return
        start = len(context) - 1                                  # the cache holds all but the newest token
        room = min(k, max_new_tokens - done - 1)                  # never draft a token that cannot be emitted
        drafts = list(draft(context, room))[:room]
        target = pick(verify([context[-1]] + drafts, start)).tolist()   # the one read per round
        a = 0
        while a < len(drafts) and drafts[a] == target[a]:
            a += 1
        new = drafts[:a] + [target[a]]
        new = new[:next((i + 1 for i, t in enumerate(new) if t in eos), len(new))]
        runner.backend.rollback(start + len(new))                 # the newest token + the kept drafts
        runner.cached = start + len(new)
        if stats is not None:
            stats.steps += 1
            stats.drafted += len(drafts)
            stats.accepted += a
