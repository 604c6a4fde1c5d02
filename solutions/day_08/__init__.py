"""Day 08 -- tokenizer, chat template, incremental detokenizer. Lesson: notes/day_08_tokenizer.md"""
from .detokenizer import IncrementalDetokenizer
from .tokenizer import Tokenizer

__all__ = ["Tokenizer"]
