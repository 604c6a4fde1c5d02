"""Reference Tokenizer: a thin layer over the `tokenizers` library plus the chat template."""
from __future__ import annotations

import json
from pathlib import Path


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only text that is final.

    Decoding a growing id list and diffing strings is wrong for byte-fallback and multi-token
    characters: an incomplete UTF-8 sequence decodes to U+FFFD. So hold text back while it ends
    in U+FFFD, and re-decode only a short window (prefix_offset..) to stay O(1) per token.
    """

    def __init__(self, tokenizer: "Tokenizer", skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0   # window start: decoded text of ids[prefix:read] is already out
        self.read_offset = 0
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tok.decode(self.ids[self.prefix_offset:], self.skip)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        piece = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += piece
        return piece


class Tokenizer:
    """encode/decode with the model's tokenizer.json; chat template from tokenizer_config.json."""

    def __init__(self, model_dir):
        from tokenizers import Tokenizer as _Fast
        model_dir = Path(model_dir)
        self._tok = _Fast.from_file(str(model_dir / "tokenizer.json"))
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        self.chat_template: str | None = cfg.get("chat_template")
        self.bos_token = _content(cfg.get("bos_token"))
        self.eos_token = _content(cfg.get("eos_token"))
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        eos_ids = []
        gen = model_dir / "generation_config.json"
        if gen.exists():
            e = json.loads(gen.read_text()).get("eos_token_id")
            eos_ids = e if isinstance(e, list) else [] if e is None else [e]
        if not eos_ids and self.eos_token:
            eos_ids = [self._tok.token_to_id(self.eos_token)]
        self.eos_token_ids: list[int] = [i for i in eos_ids if i is not None]
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ValueError("this model has no chat template (tokenizer_config.json: chat_template)")
        import jinja2
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


def _content(tok):
    return tok.get("content") if isinstance(tok, dict) else tok
