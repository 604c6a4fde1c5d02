"""Day 06 -- the safetensors format by hand. Lesson: notes/day_06_safetensors.md"""
from .safetensors import load_safetensors

__all__ = ["load_safetensors"]
