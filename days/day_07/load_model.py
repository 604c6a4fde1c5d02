"""Day 07 -- from a Hugging Face model folder to ModelConfig + ModelWeights.

config.json -> ModelConfig (classic keys or transformers 5's `rope_parameters`);
*.safetensors -> tensors renamed to the engine's names (shared/weights.py), every shape checked
against the config, cast to the requested dtype, moved to the device, lm_head tied if asked.

Lesson: notes/day_07_load_model.md        Check: pytest checkers/day_07
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from shared.config import ModelConfig, RopeScaling
from shared.weights import LAYER_NAMES, LayerWeights, ModelWeights
from days.day_06 import load_safetensors  # your day-06 loader

# TODO(day 07): a helper that returns {HF tensor name: expected shape} for a ModelConfig
# (embed, 9 tensors per layer, final norm, lm_head only when untied) makes load_model short.


def load_config(model_dir) -> ModelConfig:
    """Parse config.json (both the classic keys and transformers 5's `rope_parameters`)."""
    raise NotImplementedError("Day 07: load_config is not written yet -- edit days/day_07/load_model.py "
                              "(lesson: notes/day_07_load_model.md)")


def load_model(model_dir, dtype: torch.dtype = torch.float32, device="cpu") -> ModelWeights:
    """Read config + *.safetensors, rename to engine names, cast, move; tie lm_head if asked."""
    raise NotImplementedError("Day 07: load_model is not written yet -- edit days/day_07/load_model.py "
                              "(lesson: notes/day_07_load_model.md)")
