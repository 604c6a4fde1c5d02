"""Day 16 -- the decoder layer and the full forward pass. Lesson: notes/day_16_forward.md"""
from .forward import decoder_layer, forward

__all__ = ["forward", "decoder_layer"]
