"""One request's state: its prompt, what it has generated, how much of it the cache holds, and
how to sample it. Per-request, so nothing about a request lives on the engine (the benchmark
asks for `ignore_eos=True` instead of switching the tokenizer's EOS ids off and on)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = all tokens; top_p 1 = no nucleus cut. Checked here, so a
    bad flag is one clear line before anything runs."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int = 64
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self):
        t, k, p, n = self.temperature, self.top_k, self.top_p, self.max_tokens
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = no top-k cut), got {k}")
        if not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {p}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"max_tokens (--max-new-tokens) must be an integer >= 1, got {n}")


@dataclass
class Sequence:
    """token_ids = prompt + generated; num_cached = how many of them the KV cache holds."""
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    output_ids: list[int] = field(default_factory=list)
    num_cached: int = 0

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("empty prompt: give at least one token")
        self.prompt_ids = list(self.prompt_ids)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_len(self) -> int:
        """The most tokens this request can hold: prompt + max_tokens."""
        return len(self.prompt_ids) + self.params.max_tokens
