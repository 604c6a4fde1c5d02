"""Day 36 -- drafter 2: a draft model with its own cache. Lesson: notes/day_36_model_draft.md"""
from .model_draft import ModelDraft, model_draft, self_draft

__all__ = ["model_draft", "ModelDraft", "self_draft"]
