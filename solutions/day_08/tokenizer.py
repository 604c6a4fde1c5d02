"""Day 08 -- the model's tokenizer: BPE from tokenizer.json, special tokens, the chat template.

The BPE merges themselves come from the `tokenizers` library; what the engine needs on top is
which ids are BOS/EOS, how a conversation becomes one prompt string, and streaming decode.

Lesson: notes/day_08_tokenizer.md        Check: pytest checkers/day_08
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .detokenizer import IncrementalDetokenizer


class Tokenizer:
    """encode/decode with the model's tokenizer.json; chat template from tokenizer_config.json."""

    def __init__(self, model_dir):
        from tokenizers import Tokenizer as FastTokenizer
        model_dir = Path(model_dir)
        try:
            self._tok = FastTokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as e:  # the library raises a bare Exception: say which file
            raise ValueError(f"{model_dir / 'tokenizer.json'}: cannot load it ({e})") from None
        cfg = _read_json(model_dir / "tokenizer_config.json")
        self.chat_template: str | None = cfg.get("chat_template")
        self.bos_token, self.eos_token = _content(cfg.get("bos_token")), _content(cfg.get("eos_token"))
        self.bos_token_id = self._id(self.bos_token)
        eos = _read_json(model_dir / "generation_config.json").get("eos_token_id")
        if eos is None:  # no generation_config: the tokenizer's eos token
            eos = self._id(self.eos_token)
        self.eos_token_ids: list[int] = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the conversation the way HF transformers does (same jinja2 settings and globals),
        in a sandbox: the template comes from the model folder, and plain jinja2 runs any Python."""
        if not self.chat_template:
            raise ValueError("this model has no chat template (tokenizer_config.json: chat_template); "
                             "encode a plain prompt instead")
        if not isinstance(self.chat_template, str):
            raise ValueError("tokenizer_config.json: chat_template must be a string, "
                             f"got {type(self.chat_template).__name__}")
        from jinja2.exceptions import SecurityError, TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class Sandbox(ImmutableSandboxedEnvironment):
            def unsafe_undefined(self, obj, attribute):  # by default an Undefined that prints as ''
                raise SecurityError(f"chat template: access to {type(obj).__name__}.{attribute} is unsafe")

        def raise_exception(message):
            raise TemplateError(message)

        env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


def _read_json(path: Path) -> dict:
    """A JSON object from the model folder ({} when the file is missing)."""
    if not path.exists():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: must be a JSON object, got {type(d).__name__}")
    return d


def _content(token):
    """tokenizer_config.json writes special tokens as "text" or {"content": "text", ...}."""
    return token.get("content") if isinstance(token, dict) else token
