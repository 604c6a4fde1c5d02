"""Day 48 -- batched decode of ragged sequences over one paged pool. Lesson: notes/day_48_batched_decode.md"""
from .batch import BatchDecoder, BatchedPagedCache, forward_batch
from .skinny_linear import linear

__all__ = ["BatchedPagedCache", "BatchDecoder", "forward_batch", "linear"]
