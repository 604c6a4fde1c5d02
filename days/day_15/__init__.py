"""Day 15 -- the Llama MLP (SwiGLU). Lesson: notes/day_15_mlp.md"""
from .mlp import mlp

__all__ = ["mlp"]
