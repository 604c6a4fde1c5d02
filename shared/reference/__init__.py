"""The PyTorch reference for every component the engine needs: generation with a static or paged
KV cache, flash attention. Same names and call signatures as the days that provide them (see
syllabus.toml)."""
from shared.reference.generation import KVCache, generate
from shared.reference.graphs import DecodeGraphs
from shared.reference.loading import load_config, load_model, load_safetensors
from shared.reference.model import forward, mlp
from shared.reference.ops import (attention, decode_attention, embedding, kv_write, linear, matmul,
                                  online_softmax, paged_decode_attention, paged_kv_write, rmsnorm, rope,
                                  rope_frequencies, row_max, row_sum, sample, silu, silu_mul, softmax,
                                  vector_add)
from shared.reference.paged import BlockAllocator, PagedCache
from shared.reference.streaming import StreamEvent, StreamStats, stream, summary
from shared.reference.tokenizer import IncrementalDetokenizer, Tokenizer
from shared.reference.benchmark import benchmark
from shared.reference.fusion import add_rmsnorm, forward_fused, linear_add, norm_linear
from shared.reference.speculative import Verifier, ngram_draft, speculative, verify
from shared.reference.spec_sampling import sample_probs, spec_sample
from shared.reference.acceptance import AcceptanceStats, AdaptiveK, choose_k, expected_tokens
from shared.reference.round_cost import RoundCost, drafts_per_round, fit_round_cost, steps_per_round
from shared.reference.model_draft import ModelDraft, model_draft, self_draft
from shared.reference.quant import dequantize, quantize_int8
from shared.reference.quant import linear_w8a16
from shared.reference.quant import linear_w8a8, quantize_activations
from shared.reference.quant import decode_bytes, quantize_weights
from shared.reference.kv_int8 import Int8PagedCache, paged_decode_attention_int8, paged_kv_write_int8
from shared.reference.perplexity import greedy_agreement, perplexity
from shared.reference.smooth import channel_max, fold_smoothing, smooth
from shared.reference.batch import BatchDecoder, BatchedPagedCache, forward_batch
from shared.reference.scheduler import Request, Scheduler, StepOutput, generate_all
from shared.reference.prefix_cache import CachedBlock, PrefixCache
from shared.reference.llm import LLM
from shared.reference.loadtest import drive, latency_stats, percentile, timed_request


def __getattr__(name):
    """serve (day 52) needs fastapi and uvicorn: imported when first asked for, so the rest of the
    reference works where they are not installed."""
    if name == "serve":
        from shared.reference.server import serve
        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["KVCache", "generate", "load_config", "load_model", "load_safetensors", "forward", "mlp",
           "attention", "decode_attention", "embedding", "kv_write", "linear", "matmul", "rmsnorm",
           "rope", "rope_frequencies", "row_max", "row_sum", "sample", "silu", "silu_mul", "softmax",
           "vector_add", "IncrementalDetokenizer", "Tokenizer", "StreamEvent", "StreamStats", "stream",
           "summary", "benchmark", "DecodeGraphs", "online_softmax", "paged_kv_write",
           "paged_decode_attention", "BlockAllocator", "PagedCache", "add_rmsnorm", "linear_add", "norm_linear",
           "verify", "Verifier", "ngram_draft", "speculative", "spec_sample", "sample_probs",
           "expected_tokens", "choose_k", "AcceptanceStats", "AdaptiveK",
           "RoundCost", "steps_per_round", "drafts_per_round", "fit_round_cost",
           "model_draft", "ModelDraft", "self_draft",
           "quantize_int8", "dequantize",
           "linear_w8a16", "linear_w8a8", "quantize_activations",
           "quantize_weights", "decode_bytes",
           "paged_kv_write_int8", "paged_decode_attention_int8", "Int8PagedCache",
           "perplexity", "greedy_agreement",
           "channel_max", "smooth", "fold_smoothing",
           "BatchedPagedCache", "BatchDecoder", "forward_batch",
           "Scheduler", "generate_all", "Request", "StepOutput",
           "PrefixCache", "CachedBlock",
           "LLM", "serve",
           "percentile", "latency_stats", "timed_request", "drive"]
