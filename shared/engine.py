"""The shared engine: load a model, then generate, with whatever the track's finished days provide.

Written once; it adapts to capabilities. With no GPU it runs the PyTorch reference on the CPU
(unless `simulate=True`, which runs the track's kernels in Numba's simulator -- tiny model only).
With `decode_attention` from a finished day (or on the reference path) it keeps a static KV
cache; otherwise it recomputes the whole prefix every step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from shared import models
from shared.registry import Ops, default_track


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0            # time to first token (prefill + first sample)
    total_s: float = 0.0
    token_times: list[float] = field(default_factory=list)

    @property
    def decode_tok_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / (self.total_s - self.ttft_s) if steps > 0 and self.total_s > self.ttft_s else 0.0


class Engine:
    def __init__(self, model: str | None = None, track: str | None = None, dtype: str | None = None,
                 use_cache: bool | None = None, max_seq: int | None = None, simulate: bool = False):
        from shared import gpu  # chooses the tier before numba loads
        self.track = track or default_track()
        self.on_gpu = not gpu.SIM
        self.reference_only = not self.on_gpu and not simulate
        if self.reference_only:
            from shared import reference
            self.ops = Ops(self.track, overrides={n: getattr(reference, n) for n in reference.__all__})
        else:
            self.ops = Ops(self.track)
        self.device = gpu.device()
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, None: None}[dtype]
        if self.dtype is None:
            self.dtype = torch.float16 if self.on_gpu else torch.float32
        self.model_dir = models.resolve(model)
        ops = self.ops
        self.tokenizer = ops.Tokenizer(self.model_dir)
        self.weights = ops.load_model(self.model_dir, dtype=self.dtype, device=self.device)
        self.config = self.weights.config
        self.weights.inv_freq = ops.rope_frequencies(self.config).to(self.device)
        has_cache = self.reference_only or ops.source("decode_attention").day is not None
        self.use_cache = has_cache if use_cache is None else use_cache
        self.max_seq = min(max_seq or self.config.max_position_embeddings, self.config.max_position_embeddings)
        self.stats = Stats()

    # -- what the engine runs on, for `tinyinfer status` and the generate footer -----------------
    def describe(self) -> str:
        where = "PyTorch reference on the CPU" if self.reference_only else \
            f"{self.track} track on the {'GPU' if self.on_gpu else 'CUDA simulator'}"
        return f"{where}, {str(self.dtype).removeprefix('torch.')}, " + \
            ("static KV cache" if self.use_cache else "prefix recompute (no KV cache)")

    def _ids(self, ids) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.int32, device=self.device)

    def _positions(self, start: int, n: int) -> torch.Tensor:
        return torch.arange(start, start + n, dtype=torch.int32, device=self.device)

    def forward(self, ids: list[int]) -> torch.Tensor:
        """Logits [T, vocab] for a whole sequence, no cache (parity tests use this)."""
        with torch.inference_mode():
            return self.ops.forward(self.weights, self._ids(ids), self._positions(0, len(ids)), self.ops)

    def _recompute_fn(self):
        def next_logits(ids):
            return self.forward(ids)[-1]
        return next_logits

    def _cached_fn(self, max_len: int):
        ops, c = self.ops, self.config
        cache = ops.KVCache(c.num_layers, c.num_kv_heads, max_len, c.head_dim, self.dtype, self.device)

        def next_logits(ids):
            new, start = ids[cache.length:], cache.length
            cache.reserve(len(new))
            T, end = len(new), start + len(new)
            cache_len = torch.tensor([end], dtype=torch.int32, device=self.device)

            def attend(layer, q, k, v, positions):
                kc, vc = cache.k[layer], cache.v[layer]
                ops.kv_write(kc, vc, k, v, positions)
                if start == 0:
                    return ops.attention(q, k, v)
                if T == 1:
                    return ops.decode_attention(q[0], kc, vc, cache_len)[None]
                return ops.attention(q, kc[:, :end].transpose(0, 1), vc[:, :end].transpose(0, 1))

            with torch.inference_mode():
                logits = ops.forward(self.weights, self._ids(new), self._positions(start, T), ops, attend)
            cache.length = end
            return logits[-1]
        return next_logits

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> Iterator[int]:
        """New token ids (EOS included if reached); fills self.stats as it goes."""
        if not prompt_ids:
            raise ValueError("empty prompt: give at least one token")
        total = len(prompt_ids) + max_new_tokens
        if total > self.max_seq:
            raise ValueError(f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) = {total} "
                             f"exceeds the context limit {self.max_seq}")
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
        ops = self.ops
        next_logits = self._cached_fn(total) if self.use_cache else self._recompute_fn()

        def sample(logits):
            return ops.sample(logits, temperature, top_k, top_p, gen)

        self.stats = s = Stats(prompt_tokens=len(prompt_ids))
        t0 = time.perf_counter()
        for tok in ops.generate(next_logits, prompt_ids, max_new_tokens=max_new_tokens,
                                eos_token_ids=self.tokenizer.eos_token_ids, sample=sample):
            now = time.perf_counter() - t0
            s.token_times.append(now)
            s.new_tokens += 1
            s.ttft_s = s.ttft_s or now
            s.total_s = now
            yield tok

    def prompt_ids(self, prompt: str, chat: bool = False) -> list[int]:
        if chat:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt)

    def stream(self, prompt: str, chat: bool = False, **kw) -> Iterator[str]:
        """Text pieces as they become final (UTF-8 safe)."""
        for event in self.ops.stream(self.generate_ids(self.prompt_ids(prompt, chat), **kw), self.tokenizer):
            yield event.text

    def generate(self, prompt: str, chat: bool = False, **kw) -> str:
        return "".join(self.stream(prompt, chat, **kw))
