"""Day 08 -- stream text token by token without ever showing a broken character.

Lesson: notes/day_08_tokenizer.md        Check: pytest checkers/day_08
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only text that is final.

    Decoding each token alone is wrong (a character can span several tokens, and some decoders
    drop a leading space), and decoding the whole list every step is O(n) per token. So decode
    a short window twice -- ids[prefix:read] (already shown) and ids[prefix:] -- emit the
    difference, and hold it back while it ends in U+FFFD (a character still incomplete).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0   # window start: text of ids[prefix_offset:read_offset] is already out
        self.read_offset = 0
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the newly final text ('' while a character is incomplete)."""
        # TODO(day 08): append the id, decode the two windows with self.tok.decode(..., self.skip),
        # hold back while the new text ends in REPLACEMENT, else move the offsets and return the piece.
        raise NotImplementedError("Day 08: IncrementalDetokenizer.push is not written yet -- edit "
                                  "days/day_08/detokenizer.py (lesson: notes/day_08_tokenizer.md)")
