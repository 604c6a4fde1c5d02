"""Day 21 -- streaming: text pieces, TTFT and inter-token latency. Lesson: notes/day_21_streaming.md"""
from .streaming import stream, summary

__all__ = ["stream", "summary"]
