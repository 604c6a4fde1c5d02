"""The engine: load a model, then generate with whatever the track's finished days provide.

It picks what to run from `capabilities(track)`: the PyTorch reference on the CPU when there is
no GPU (unless `simulate=True`: the track's kernels in Numba's simulator, tiny model only); a
static KV cache once `decode_attention` is finished, else prefix recompute; a paged KV cache
once day 31 is finished; CUDA graphs for the decode step once day 23 is finished and a GPU is
present; speculative decoding when asked for (`speculative="ngram"`, or `"draft"` with a draft
model: `draft_layers=L` of the target's own or `draft_model=DIR`; shared/engine/speculative.py)
once day 35 is finished, with K chosen per round from the running acceptance (`spec_k="auto"`)
once day 38 is; int8 weights when asked for (`quant="w8a16"`, quantized once at load time:
shared/engine/quant.py; `quant="w8a8-smooth"` smooths first, calibrated on `calibration` token ids,
by default the shipped text's last 512: shared/engine/smooth.py); an int8 paged KV cache when asked
for (`kv_int8=True`, day 44's `Int8PagedCache`). The per-step work is the runner's
(shared/engine/runner.py); the per-request state is a Sequence.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from shared import models
from shared.course import registry
from shared.course.registry import Ops, default_track
from shared.engine.attention import NoCache, StaticCache
from shared.engine.capabilities import capabilities
from shared.engine.decode_loop import generate_async
from shared.engine import quant as quant_modes
from shared.engine.errors import OutOfBlocksError
from shared.engine.runner import ModelRunner, check_ids
from shared.engine.sequence import SamplingParams, Sequence
from shared.engine.speculative import (AUTO_K, DEFAULT_K, MAX_K, SpecStats, Speculator, check_draft,
                                       check_options, load_draft)


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0            # time to first token (prefill + first sample)
    total_s: float = 0.0
    token_times: list[float] = field(default_factory=list)
    spec: SpecStats | None = None  # speculative decoding's counters (tokens per target step, acceptance)

    @property
    def decode_tok_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / (self.total_s - self.ttft_s) if steps > 0 and self.total_s > self.ttft_s else 0.0


class Engine:
    def __init__(self, model: str | None = None, track: str | None = None, dtype: str | None = None,
                 use_cache: bool | None = None, max_seq: int | None = None, simulate: bool = False,
                 graphs: bool | None = None, paged: bool | None = None, block_size: int = 16,
                 num_blocks: int | None = None, async_decode: bool | None = None,
                 speculative: str | None = None, spec_k: int | str = DEFAULT_K, draft_layers: int | None = None,
                 draft_model: str | None = None, quant: str | None = None, quant_group: int | None = None,
                 quant_head: bool = True, kv_int8: bool = False, smooth_alpha: float | None = None,
                 calibration: list[int] | None = None):
        from shared.runtime import gpu  # chooses the tier before numba loads
        self.track = track or default_track()
        self.caps = capabilities(self.track, gpu.TIER, simulate)
        self.on_gpu = not gpu.SIM
        self.reference_only = self.caps.reference_only
        check_draft(speculative, draft_layers, draft_model)    # one line before the model loads
        self.quant = quant_modes.check_options(quant, quant_group, quant_head, kv_int8, smooth_alpha)
        if calibration is not None and (self.quant is None or self.quant.alpha is None):
            raise ValueError("calibration tokens go with quant='w8a8-smooth' (they calibrate the smoothing)")
        quant_modes.check_track(self.quant, self.track, self.reference_only)
        quant_modes.check_kv_int8(kv_int8, use_cache=use_cache, paged=paged, speculative=speculative)
        quant_modes.check_kv_track(kv_int8, self.track, self.reference_only)
        self.kv_int8 = kv_int8
        if speculative is not None:
            check_options(speculative, spec_k)
            if use_cache is False or not self.caps.cache:
                raise ValueError("speculative decoding needs the KV cache: drop --no-cache (and finish day 20 on a GPU)")
            if not (self.reference_only or registry.has_feature("speculative", self.track)):
                raise ValueError(f"speculative decoding needs a finished day 35 on the {self.track} track")
            if spec_k == "auto" and not (self.reference_only or registry.has_feature("adaptive_k", self.track)):
                raise ValueError(f"spec_k='auto' (--spec-k auto) needs a finished day 38 on the {self.track} track: "
                                 f"give K as a number (1..{MAX_K}) until then")
        self.speculative, self.spec_k = speculative, spec_k     # None: plain decoding
        self.draft_layers, self.draft_model = draft_layers, draft_model   # speculative="draft" (day 36)
        self._draft = None                     # ((draft_layers, draft_model), the draft's weights)
        self._speculator: Speculator | None = None
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
        if self.quant is not None:          # what the model must have: from its config, before any kernel
            quant_modes.check_model(self.quant, ops.load_config(self.model_dir), kernels=not self.reference_only)
            if self.quant.mode == "gguf":
                from shared.engine.q4_model import check_gguf
                check_gguf(self.model_dir)
        self.tokenizer = ops.Tokenizer(self.model_dir)
        self.weights = ops.load_model(self.model_dir, dtype=self.dtype, device=self.device)
        self.config = self.weights.config
        self.weights.inv_freq = ops.rope_frequencies(self.config).to(self.device)
        if self.quant is not None and self.quant.alpha is not None and calibration is None:
            from shared.engine.smooth import calibration_ids
            calibration = calibration_ids(self.tokenizer)
        quant_modes.apply(ops, self.weights, self.quant, self.model_dir, calibration=calibration,
                          track=self.track)       # int8 / 4-bit matrices, once (smoothed first: w8a8-smooth)
        self.use_cache = self.caps.cache if use_cache is None else use_cache
        self.use_graphs = self.caps.graphs if graphs is None else graphs
        if self.use_graphs and not self.caps.graphs:
            raise ValueError("CUDA graphs need a GPU, a finished day 20 (the cache) and a finished day 23")
        self.use_paged = self.caps.paged if paged is None else paged
        if self.use_paged and not self.caps.paged and not kv_int8:
            raise ValueError("the paged KV cache needs a finished day 31")
        if kv_int8:                            # day 44's backend is a paged cache of its own (checked above)
            self.use_cache = self.use_paged = True
        if block_size < 1 or (num_blocks is not None and num_blocks < 1):
            raise ValueError(f"block_size and num_blocks must be >= 1, got {block_size}, {num_blocks}")
        self.block_size, self.num_blocks = block_size, num_blocks    # num_blocks None: sized like the static cache
        self.async_decode = async_decode       # None: with the graphs (shared/engine/decode_loop.py)
        self.max_seq = min(max_seq or self.config.max_position_embeddings, self.config.max_position_embeddings)
        if speculative == "draft":
            self.draft_weights()               # a depth out of range or another vocabulary: one line now
        self._runners: dict = {}
        self.stats = Stats()

    def describe(self) -> str:
        """What the engine runs on now (its modes may differ from the track's capabilities)."""
        now = replace(self.caps, cache=self.use_cache, graphs=self.use_cache and self.use_graphs,
                      paged=self.use_cache and self.use_paged)
        k = f"auto {AUTO_K[0]}..{AUTO_K[1]}" if self.spec_k == "auto" else self.spec_k
        spec = f", speculative {self.speculative} (K={k}{self._describe_draft()})" if self.speculative else ""
        quant = f", {self.quant.describe()}" if self.quant else ""
        if self.weights.smoothing is not None:
            src = registry.source("smooth", self.track).describe(self.track)
            quant += f", smoothed by {src} on {self.weights.smoothing['tokens']} calibration tokens"
        if self.kv_int8:
            quant += ", int8 KV cache (an fp16 scale per token and KV head)"
        return now.describe(str(self.dtype).removeprefix("torch.")) + quant + spec

    def _describe_draft(self) -> str:
        if self.speculative != "draft":
            return ""
        n = self.draft_weights().config.num_layers
        return f", draft {n} of {self.config.num_layers} layers" if self.draft_model is None else \
            f", draft model {self.draft_model}, {n} layers"

    def draft_weights(self):
        """The draft model's weights for speculative="draft", loaded once per (draft_layers,
        draft_model): a self-draft shares the target's tensors (shared/engine/speculative.py)."""
        key = (self.draft_layers, self.draft_model)
        if self._draft is None or self._draft[0] != key:
            check_draft("draft", *key)
            self._draft = key, load_draft(self.ops, self.weights, self.model_dir, draft_layers=self.draft_layers,
                                          draft_model=self.draft_model, dtype=self.dtype, device=self.device)
        return self._draft[1]

    def runner(self, max_len: int) -> ModelRunner:
        """One runner per mode, kept across generations so its buffers and graphs are reused.
        The cache is sized in powers of two (at least 1024): a longer request grows it once. A paged
        pool of num_blocks (when given) is fixed: a request that outgrows it raises OutOfBlocksError."""
        key = ("cache", self.use_graphs, self.use_paged) if self.use_cache else "recompute"
        r = self._runners.get(key)
        fixed = self.use_paged and self.num_blocks is not None
        if r is None or (self.use_cache and not fixed and r.backend.max_len < max_len):
            if self.use_cache:
                backend = self.cache_backend(self.cache_size(max_len))
            else:
                backend = NoCache(self.ops)
            graphs = self.ops.DecodeGraphs if self.use_cache and self.use_graphs else None
            r = self._runners[key] = ModelRunner(self.ops, self.weights, backend, self.device, graphs_cls=graphs)
        return r

    def cache_size(self, max_len: int) -> int:
        """Positions of the cache a runner gets for requests up to max_len: a power of two, at
        least 1024, at most max_seq (so a longer request grows it once, not token by token)."""
        cap = 1024
        while cap < max_len:
            cap *= 2
        return min(cap, self.max_seq)

    def cache_backend(self, max_len: int):
        """The cache this engine decodes with, holding max_len tokens: a paged pool (a given
        num_blocks wins; int8 with kv_int8) or a static cache."""
        if self.use_paged:
            blocks = self.num_blocks or -(-max_len // self.block_size)
            if self.kv_int8:
                return self.ops.Int8PagedCache(self.ops, self.config, blocks, self.block_size, self.dtype, self.device)
            return self.ops.PagedCache(self.ops, self.config, blocks, self.block_size, self.dtype, self.device)
        return StaticCache(self.ops, self.config, max_len, self.dtype, self.device)

    def uses_async_loop(self, runner: ModelRunner) -> bool:
        """The device-fed loop (decode_loop.py) once there is a cache; by default only with CUDA
        graphs, where the host is what the GPU would wait for. Otherwise day 18's `generate`."""
        if isinstance(runner.backend, NoCache):
            return False
        return runner.graphs is not None if self.async_decode is None else self.async_decode

    def forward(self, ids: list[int]) -> torch.Tensor:
        """Logits [T, vocab] for a whole sequence, no cache (parity tests use this)."""
        return ModelRunner(self.ops, self.weights, NoCache(self.ops), self.device).forward(ids, 0, logits_at=None)

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     ignore_eos: bool = False) -> Iterator[int]:
        """New token ids (EOS included if reached, unless ignore_eos); fills self.stats as it goes."""
        seq = Sequence(prompt_ids, SamplingParams(temperature, top_k, top_p, max_new_tokens, ignore_eos, seed))
        return self.run(seq)

    def run(self, seq: Sequence) -> Iterator[int]:
        p = seq.params
        if seq.max_len > self.max_seq:
            raise ValueError(f"prompt ({len(seq.prompt_ids)}) + max_new_tokens ({p.max_tokens}) = {seq.max_len} "
                             f"exceeds the context limit {self.max_seq}")
        check_ids(seq.prompt_ids, self.config.vocab_size)
        if self.speculative and p.temperature > 0:
            raise ValueError(f"speculative decoding is greedy here: use temperature 0 (got {p.temperature}), or drop "
                             "--speculative (speculative sampling is day 37)")
        return self._run(seq)

    def speculator(self, runner: ModelRunner) -> Speculator:
        """The runner's Verifier (buffers, graphs) and drafter, kept across generations."""
        sp = self._speculator
        draft = self.draft_weights() if self.speculative == "draft" else None
        if (sp is None or sp.runner is not runner or (sp.method, sp.k) != (self.speculative, self.spec_k)
                or sp.draft_weights is not draft):
            sp = self._speculator = Speculator(self.ops, runner, self.speculative, self.spec_k,
                                               graphs_cls=self.ops.DecodeGraphs if runner.graphs is not None else None,
                                               draft_weights=draft)
        return sp

    def _run(self, seq: Sequence) -> Iterator[int]:
        p, ops = seq.params, self.ops
        gen = None
        if p.seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(p.seed)
        runner = self.runner(seq.max_len)
        runner.reset()

        def sample(logits):
            return ops.sample(logits, p.temperature, p.top_k, p.top_p, gen)

        eos = () if p.ignore_eos else self.tokenizer.eos_token_ids
        self.stats = s = Stats(prompt_tokens=len(seq.prompt_ids))
        if self.speculative:
            s.spec = SpecStats(self.speculative, self.spec_k)
            tokens = self.speculator(runner).generate(seq.prompt_ids, max_new_tokens=p.max_tokens,
                                                      eos_token_ids=eos, stats=s.spec)
        elif self.uses_async_loop(runner):
            tokens = generate_async(runner, seq.prompt_ids, max_new_tokens=p.max_tokens, eos_token_ids=eos,
                                    sample=sample, greedy=p.temperature <= 0)
        else:
            tokens = ops.generate(runner.next_logits, seq.prompt_ids, max_new_tokens=p.max_tokens,
                                  eos_token_ids=eos, sample=sample)
        t0 = time.perf_counter()
        try:
            for tok in tokens:
                now = time.perf_counter() - t0
                seq.output_ids.append(tok)
                s.token_times.append(now)
                s.new_tokens += 1
                s.ttft_s = s.ttft_s or now
                s.total_s = now
                yield tok
        except OutOfBlocksError as e:
            b = runner.backend
            need = -(-seq.max_len // b.block_size)
            raise OutOfBlocksError(
                f"out of KV blocks with {len(seq)} tokens in the sequence: this request ({seq.max_len} tokens) "
                f"needs {need} blocks of {b.block_size}, {b.allocator.num_free} of the pool's {b.num_blocks} are free -- "
                f"raise num_blocks (tinyinfer generate --num-blocks {need})") from e
        finally:
            runner.release()                      # a paged cache's blocks go back to the pool

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
