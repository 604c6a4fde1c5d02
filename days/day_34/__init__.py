"""Day 34 -- drafter 1: n-gram prompt lookup. Lesson: notes/day_34_ngram_draft.md"""
from .ngram_draft import ngram_draft

__all__ = ["ngram_draft"]
