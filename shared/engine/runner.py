"""The model runner: weights, one cache backend, fixed decode buffers, and the decode graphs.

A prefill runs eagerly on tensors made for it. A decode step writes the new token, its position
and the cache length into buffers allocated once, then either runs the forward eagerly or
replays the CUDA graph captured for that (batch size, length bucket) -- the graph reads the same
buffers, so nothing about the step is baked into it (see shared/DESIGN.md, "capture-safe").
Token ids are checked here, on the host, while they are still Python ints.
"""
from __future__ import annotations

import torch

from shared.engine.attention import NoCache
from shared.weights import fuse_projections


def check_ids(ids, vocab_size: int) -> None:
    """One line, before any launch, for a token id the embedding table does not have."""
    for i in ids:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} out of range for a vocabulary of {vocab_size} (valid: 0..{vocab_size - 1})")


class ModelRunner:
    """next_logits(token_ids) -> logits [vocab] of the next token, feeding only what the cache lacks."""

    def __init__(self, ops, weights, backend, device, graphs_cls=None):
        self.ops, self.weights, self.backend, self.device = ops, weights, backend, device
        fuse_projections(weights)          # day 54's forward reads wqkv / w_gate_up (idempotent, no copy once fused)
        self.cached = 0                                            # tokens the backend holds
        self.ids_buf = torch.zeros(1, dtype=torch.int32, device=device)
        self.pos_buf = torch.zeros(1, dtype=torch.int32, device=device)
        self.next_buf = torch.zeros(1, dtype=torch.int32, device=device)   # the token a step picked
        self.graphs = self.greedy_graphs = None
        if graphs_cls is not None and not isinstance(backend, NoCache):   # a static or paged cache
            self.graphs = graphs_cls(self._decode_step, max_len=backend.max_len)
            self.greedy_graphs = graphs_cls(self._greedy_step, max_len=backend.max_len)

    def reset(self) -> None:
        """A new sequence: forget what the cache holds (the buffers and graphs stay)."""
        self.cached = 0

    def release(self) -> None:
        """The sequence is finished: the backend gives back what it holds (a paged cache's blocks)."""
        self.backend.release()
        self.cached = 0

    def forward(self, ids: list[int], start: int, logits_at=slice(-1, None)) -> torch.Tensor:
        """Eager forward of ids at positions start.. (a prefill, or the recompute path)."""
        check_ids(ids, self.weights.config.vocab_size)
        T = len(ids)
        self.backend.prepare(start, T)
        with torch.inference_mode():
            return self.ops.forward(self.weights, torch.tensor(ids, dtype=torch.int32, device=self.device),
                                    torch.arange(start, start + T, dtype=torch.int32, device=self.device),
                                    self.ops, self.backend, logits_at=logits_at)

    def _decode_step(self, batch_size: int = 1, bucket: int | None = None) -> torch.Tensor:
        """One token from the fixed buffers -> logits [1, vocab]. What the graphs capture."""
        with torch.inference_mode():
            return self.ops.forward(self.weights, self.ids_buf, self.pos_buf, self.ops, self.backend)

    def _greedy_step(self, batch_size: int = 1, bucket: int | None = None) -> torch.Tensor:
        """The decode step with its argmax: the token lands in next_buf on the device. It reads
        ids_buf and never writes it, so the warm-up runs before a capture change nothing."""
        with torch.inference_mode():
            logits = self.ops.forward(self.weights, self.ids_buf, self.pos_buf, self.ops, self.backend)
            self.next_buf.copy_(self.ops.sample(logits[0], 0.0, 0, 1.0, None).view(1))
        return self.next_buf

    def decode_on_device(self, position: int, sample=None) -> None:
        """One step from the token already in ids_buf (put there on the device): its token goes
        to next_buf. sample None: greedy, inside the graph; else sample(logits) right after."""
        self.pos_buf.fill_(position)
        self.backend.prepare(position, 1)
        if sample is None:
            if self.greedy_graphs is not None:
                self.greedy_graphs.run(1, position + 1)
            else:
                self._greedy_step()
            return
        logits = self.graphs.run(1, position + 1) if self.graphs is not None else self._decode_step()
        self.next_buf.copy_(sample(logits[0]).view(1))

    def decode(self, token: int, position: int) -> torch.Tensor:
        check_ids((token,), self.weights.config.vocab_size)
        self.ids_buf.fill_(token)                  # host ints into fixed buffers: no sync, no new tensor
        self.pos_buf.fill_(position)
        self.backend.prepare(position, 1)
        if self.graphs is not None:
            return self.graphs.run(1, position + 1)[0]
        return self._decode_step()[0]

    def next_logits(self, ids: list[int]) -> torch.Tensor:
        if isinstance(self.backend, NoCache):
            return self.forward(ids, 0)[-1]
        new, start = ids[self.cached:], self.cached
        if len(new) == 1 and start > 0:
            logits = self.decode(new[0], start)
        else:
            logits = self.forward(new, start)[-1]
        self.cached = len(ids)
        return logits
