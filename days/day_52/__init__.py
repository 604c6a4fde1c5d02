"""Day 52 -- serving: an OpenAI-compatible HTTP server with SSE streaming. Lesson: notes/day_52_serve.md"""
from .serve import AsyncLLM, make_app, serve

__all__ = ["AsyncLLM", "make_app", "serve"]
