"""Day 04 -- stable softmax in one kernel. Lesson: notes/day_04_softmax.md"""
from .softmax import softmax

__all__ = ["softmax"]
