"""Day 08 -- the model's tokenizer: BPE from tokenizer.json, special tokens, the chat template.

The BPE merges themselves come from the `tokenizers` library; what the engine needs on top is
which ids are BOS/EOS, how a conversation becomes one prompt string, and streaming decode.

Lesson: notes/day_08_tokenizer.md        Check: pytest checkers/day_08
"""
from __future__ import annotations

import json
from pathlib import Path

from .detokenizer import IncrementalDetokenizer

_TODO = "is not written yet -- edit days/day_08/tokenizer.py (lesson: notes/day_08_tokenizer.md)"


class Tokenizer:
    """encode/decode with the model's tokenizer.json; chat template from tokenizer_config.json."""

    def __init__(self, model_dir):
        # TODO(day 08): load tokenizer.json with `tokenizers.Tokenizer.from_file`; read
        # tokenizer_config.json (chat_template, bos_token, eos_token -- a str or {"content": ...})
        # and generation_config.json (eos_token_id: int or list); set bos_token_id,
        # eos_token_ids (a list) and vocab_size (added tokens included).
        raise NotImplementedError(f"Day 08: Tokenizer.__init__ {_TODO}")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError(f"Day 08: Tokenizer.encode {_TODO}")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        raise NotImplementedError(f"Day 08: Tokenizer.decode {_TODO}")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the conversation the way HF transformers does (same jinja2 settings and globals)."""
        raise NotImplementedError(f"Day 08: Tokenizer.apply_chat_template {_TODO}")

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        raise NotImplementedError(f"Day 08: Tokenizer.detokenizer {_TODO}")
