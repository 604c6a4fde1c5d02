"""Day 07 -- config and weights. Lesson: notes/day_07_load_model.md"""
from .load_model import load_config, load_model

__all__ = ["load_config", "load_model"]
