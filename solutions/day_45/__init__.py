"""Day 45 -- perplexity and greedy agreement: is the quantized engine still the model? Lesson: notes/day_45_perplexity.md"""
from .perplexity import greedy_agreement, perplexity

__all__ = ["perplexity", "greedy_agreement"]
