"""Day 12 -- RoPE: frequencies (theta, llama3 scaling) and the in-place rotation. Lesson: notes/day_12_rope.md"""
from .rope import rope, rope_frequencies

__all__ = ["rope_frequencies", "rope"]
