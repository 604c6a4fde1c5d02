"""Day 51 -- the engine API: LLM.generate(prompts, SamplingParams), LLM.stream. Lesson: notes/day_51_llm_api.md"""
from .llm import LLM

__all__ = ["LLM"]
