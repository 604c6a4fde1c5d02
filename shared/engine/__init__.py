"""The engine, one idea per file (the shape nano-vllm has):
sequence.py (one request and its SamplingParams) -> llm.py (Engine: tokenize, generate, stream)
-> runner.py (weights, fixed buffers, graphs; prefill and decode steps) -> attention.py (cache
backends behind the forward pass's `attend`). capabilities.py says which of them a track uses."""
from shared.engine.capabilities import Capabilities, capabilities
from shared.engine.llm import Engine, Stats
from shared.engine.sequence import SamplingParams, Sequence

__all__ = ["Capabilities", "capabilities", "Engine", "Stats", "SamplingParams", "Sequence"]
