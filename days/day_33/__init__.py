"""Day 33 -- the verify pass: score K drafted tokens in one forward. Lesson: notes/day_33_verify.md"""
from .verify import Verifier, verify

__all__ = ["verify", "Verifier"]
