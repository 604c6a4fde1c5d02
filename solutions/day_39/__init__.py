"""Day 39 -- what a speculative round costs, and the speedup it allows. Lesson: notes/day_39_spec_bench.md"""
from .round_cost import RoundCost, drafts_per_round, fit_round_cost, steps_per_round

__all__ = ["RoundCost", "steps_per_round", "drafts_per_round", "fit_round_cost"]
