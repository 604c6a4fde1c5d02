"""Day 49 -- continuous batching scheduler. Lesson: notes/day_49_scheduler.md"""
from .scheduler import Scheduler, generate_all

__all__ = ["Scheduler", "generate_all"]
