"""Day 38 -- acceptance rate, expected tokens per step, adaptive K. Lesson: notes/day_38_acceptance.md"""
from .acceptance import AcceptanceStats, AdaptiveK, choose_k, expected_tokens

__all__ = ["expected_tokens", "choose_k", "AcceptanceStats", "AdaptiveK"]
