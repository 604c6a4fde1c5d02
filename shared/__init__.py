"""tinyinfer's shared engine: syllabus, registry, reference ops, models, engine and CLI.

Importing this package is cheap and never imports numba: the tier (GPU or simulator) must be
chosen before numba is first imported (see shared.runtime.tier).
"""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
