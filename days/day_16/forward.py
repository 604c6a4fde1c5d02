"""Day 16 -- the Llama forward pass: embedding, decoder layers, final norm, lm_head.

Lesson: notes/day_16_forward.md        Check: pytest checkers/day_16
"""
import torch

from shared.weights import ModelWeights


def decoder_layer(h: torch.Tensor, index: int, weights: ModelWeights, positions: torch.Tensor, ops,
                  attend) -> torch.Tensor:
    """One pre-norm block: h + attention(norm(h)), then + mlp(norm(h)). h [T, hidden] -> [T, hidden]."""
    raise NotImplementedError("Day 16: decoder_layer is not written yet -- edit days/day_16/forward.py "
                              "(lesson: notes/day_16_forward.md)")


def forward(weights: ModelWeights, ids: torch.Tensor, positions: torch.Tensor, ops, attend=None,
            logits_at=None) -> torch.Tensor:
    """Logits (fp32) for token ids [T] at positions [T]: [T, vocab], or only the rows logits_at picks.

    attend(layer, q, k, v, positions) -> [T, H, hd] is how the engine adds a KV cache without
    this function knowing; None means plain causal attention over the tokens given.
    logits_at (a slice like slice(-1, None), or an index tensor) selects the rows of the last
    hidden state that go through the final norm and the lm_head: a prefill needs only its last.
    """
    raise NotImplementedError("Day 16: forward is not written yet -- edit days/day_16/forward.py "
                              "(lesson: notes/day_16_forward.md)")
