"""Day 37 -- speculative sampling keeps the target's distribution. Lesson: notes/day_37_spec_sampling.md"""
from .spec_sample import spec_sample

__all__ = ["spec_sample"]
