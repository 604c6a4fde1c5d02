"""Day 23 -- launch overhead and CUDA graphs for the decode step. Lesson: notes/day_23_cuda_graphs.md"""
from .graphs import DecodeGraphs

__all__ = ["DecodeGraphs"]
