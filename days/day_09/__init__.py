"""Day 09 -- embedding lookup (gather). Lesson: notes/day_09_embedding.md"""
from .embedding import embedding

__all__ = ["embedding"]
