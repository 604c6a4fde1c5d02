"""Day 46 -- outliers and SmoothQuant-style smoothing: move part of each activation channel's range into
the weights that read it. Lesson: notes/day_46_smoothquant.md"""
from .smooth import channel_max, fold_smoothing, smooth

__all__ = ["channel_max", "smooth", "fold_smoothing"]
