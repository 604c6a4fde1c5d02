"""Errors a caller of the engine can catch and act on (each message is one line that says what to do)."""


class OutOfBlocksError(RuntimeError):
    """The paged KV pool has fewer free blocks than a request needs. Nothing was changed: the
    caller can free a sequence, wait, or start the engine with more blocks."""
