"""Reference Tokenizer: a thin layer over the `tokenizers` library plus the chat template."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from shared.models import ModelFileError
from shared.reference.loading import read_json


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
    """encode/decode with the model's tokenizer.json; chat template from tokenizer_config.json.
    A file that is missing or malformed is a one-line ModelFileError naming it."""

    def __init__(self, model_dir):
        from tokenizers import Tokenizer as _Fast
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelFileError(path, "is a folder, not a file" if path.is_dir() else
                                 "missing (the model folder needs its tokenizer.json)")
        try:
            self._tok = _Fast.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception for a bad file
            raise ModelFileError(path, f"the tokenizers library cannot load it ({e})") from None
        self.config_path = model_dir / "tokenizer_config.json"
        cfg = read_json(self.config_path, missing_ok=True)
        self.chat_template = cfg.get("chat_template")  # checked when used: plain prompts need none
        self.bos_token = _token(self.config_path, cfg, "bos_token")
        self.eos_token = _token(self.config_path, cfg, "eos_token")
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        gen = model_dir / "generation_config.json"
        e = read_json(gen, missing_ok=True).get("eos_token_id")
        eos_ids = e if isinstance(e, list) else [] if e is None else [e]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in eos_ids):
            raise ModelFileError(gen, f"eos_token_id must be a token id or a list of them, got {e!r}")
        if not eos_ids and self.eos_token:
            eos_ids = [self._tok.token_to_id(self.eos_token)]
        self.eos_token_ids: list[int] = [i for i in eos_ids if i is not None]
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the template as HF transformers does, in a jinja2 sandbox: the template comes
        from the model folder, and outside a sandbox it could run any Python."""
        if not self.chat_template:
            raise ValueError("this model has no chat template (tokenizer_config.json: chat_template)")
        if not isinstance(self.chat_template, str):
            raise ModelFileError(self.config_path, "chat_template must be a string, "
                                 f"got {type(self.chat_template).__name__}")
        try:
            return chat_environment().from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except Exception as e:  # a template is the model folder's code: its failure is the folder's
            raise ModelFileError(self.config_path, f"chat_template failed: {type(e).__name__}: {e}") from None

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


def chat_environment():
    """HF transformers' chat-template environment (ImmutableSandboxedEnvironment, trim_blocks,
    lstrip_blocks, loop controls, raise_exception, strftime_now), except that touching an unsafe
    attribute raises SecurityError instead of quietly rendering as ''."""
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def raise_exception(message):
        raise TemplateError(message)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


def _token(path: Path, cfg: dict, key: str) -> str | None:
    """tokenizer_config.json writes special tokens as "text" or {"content": "text", ...}."""
    tok = cfg.get(key)
    tok = tok.get("content") if isinstance(tok, dict) else tok
    if tok is not None and not isinstance(tok, str):
        raise ModelFileError(path, f"{key} must be a string or {{\"content\": string}}, got {tok!r}")
    return tok
