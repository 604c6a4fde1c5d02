"""Reference generation pieces: the decode loop and the static KV cache."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch


def generate(next_logits: Callable[[list[int]], torch.Tensor], prompt_ids: list[int], *,
             max_new_tokens: int, eos_token_ids: Iterable[int] = (),
             sample: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[int]:
    """Yield new token ids until an EOS id (yielded too, as HF does) or max_new_tokens.

    next_logits(ids) returns the logits [vocab] for the token after `ids`; whether it recomputes
    the whole prefix or uses a KV cache is its business -- the loop is the same.
    """
    ids = list(prompt_ids)
    eos = set(eos_token_ids)
    for _ in range(max_new_tokens):
        tok = int(sample(next_logits(ids)))
        yield tok
        if tok in eos:
            return
        ids.append(tok)


class KVCache:
    """Static cache: k and v are [layers, kv_heads, max_seq, head_dim].

    Layout choice: one layer's slice k[l] is [KV, max_seq, hd], so the keys one KV head reads in
    decode attention are contiguous rows (coalesced loads), and a layer is a plain view.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, max_seq: int, head_dim: int,
                 dtype: torch.dtype, device):
        shape = (num_layers, num_kv_heads, max_seq, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_seq = max_seq
        self.length = 0  # tokens stored (host-side bookkeeping, no device sync)

    def reserve(self, new_tokens: int) -> None:
        """Raise before writing past the end -- with the limit in the message."""
        if self.length + new_tokens > self.max_seq:
            raise ValueError(f"KV cache full: {self.length} + {new_tokens} tokens > max_seq={self.max_seq}; "
                             "use a shorter prompt, fewer new tokens, or a larger --max-seq")
