"""Day 53 -- load test: throughput vs concurrency, TTFT and ITL percentiles. Lesson: notes/day_53_load_test.md"""
from .loadtest import drive, latency_stats, percentile, timed_request

__all__ = ["percentile", "latency_stats", "timed_request", "drive"]
