"""--quant w8a8-smooth (day 46): SmoothQuant-style smoothing before the weights go to int8.

Once, at load time, on the unquantized model:
1. calibrate: run the PyTorch reference forward over calibration tokens (windows of at most
   CAL_WINDOW, each from position 0) and keep, per layer, max |x| of every channel of the two
   RMSNorm outputs a projection reads: attn_norm's (q, k, v read it) and mlp_norm's (gate, up)
   -- the track's `channel_max`;
2. per layer and pair: s = the track's `smooth(act_max, [the matrices that read it], alpha)`, then
   the track's `fold_smoothing`: the norm weight becomes g / s, every one of those matrices W * s
   (column j times s_j). x W^T is unchanged in exact arithmetic, and nothing is added to the
   decode step: the norm already multiplies by g.
Then w8a8 as usual (shared/engine/quant.py: fuse, quantize, int8 activations).

wo and w_down keep their inputs as they are: no norm precedes them to take the 1/s. The final
norm -> lm_head pair is left out too (a tied head shares its matrix with the embedding table).
Calibration tokens default to the LAST `CAL_TOKENS` tokens of the shipped text; `tinyinfer
perplexity` scores only the tokens before them (shared/quality.py), so no row is scored on the
tokens that calibrated it. The three names come from the track (host PyTorch, any tier, like
day 45's perplexity): the learner's day 46 once it is finished, else the reference.
"""
from __future__ import annotations

import torch

from shared.engine.quant import DEFAULT_ALPHA

CAL_TOKENS = 512       # the calibration slice: the last 512 tokens of the shipped text
CAL_WINDOW = 512       # calibration windows: at most this many tokens per forward
PAIRS = (("attn_norm", ("wq", "wk", "wv")), ("mlp_norm", ("w_gate", "w_up")))   # norm -> what reads its output


def smoothing_ops(track: str | None):
    """Where channel_max, smooth and fold_smoothing come from: the track's (the registry's rule)."""
    from shared.course.registry import Ops
    return Ops(track)


def calibration_ids(tokenizer, n: int = CAL_TOKENS, text=None) -> list[int]:
    """The last n tokens of `text` (default: the shipped text, shared/texts/)."""
    from shared.quality import TEXT
    ids = tokenizer.encode(text if text is not None else TEXT.read_text(encoding="utf-8"))
    return ids[-n:]


def check_calibration(ids, vocab_size: int) -> list[int]:
    """One line for calibration tokens the forward cannot run."""
    ids = [int(i) for i in ids] if ids is not None else []
    if not ids:
        raise ValueError("smoothing needs calibration tokens: none given")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(f"calibration token {bad} is outside the vocabulary (0..{vocab_size - 1})")
    return ids


class _Recorder:
    """The reference ops, with rmsnorm recording channel_max of the outputs of the norms in `keys`."""

    def __init__(self, keys: dict, channel_max):
        from shared import reference
        self._ref, self._keys, self._channel_max = reference, keys, channel_max
        self.stats: dict = {}

    def __getattr__(self, name):
        return getattr(self._ref, name)

    def rmsnorm(self, x, weight, eps):
        y = self._ref.rmsnorm(x, weight, eps)
        key = self._keys.get(id(weight))
        if key is not None:
            self.stats[key] = self._channel_max(y, self.stats.get(key))
        return y


def calibrate(weights, ids, channel_max, *, window: int = CAL_WINDOW) -> dict:
    """{(layer, "attn_norm" | "mlp_norm"): float32 [hidden]}: max |x| per channel of each norm's
    output over every calibration token (reference forward, unquantized weights)."""
    from shared.reference.model import forward
    keys = {id(getattr(L, norm)): (i, norm) for i, L in enumerate(weights.layers) for norm, _ in PAIRS}
    rec = _Recorder(keys, channel_max)
    window = min(window, weights.config.max_position_embeddings)
    with torch.no_grad():
        for begin in range(0, len(ids), window):
            chunk = torch.tensor(ids[begin:begin + window], dtype=torch.int32, device=weights.device)
            positions = torch.arange(len(chunk), dtype=torch.int32, device=weights.device)
            forward(weights, chunk, positions, rec, logits_at=slice(-1, None))
    return rec.stats


def smooth_model(ops, weights, ids, alpha: float = DEFAULT_ALPHA, *, window: int = CAL_WINDOW) -> dict:
    """Calibrate on `ids`, then smooth every layer's two pairs IN PLACE with ops.smooth and
    ops.fold_smoothing (plain, unfused weights: before quantization). Returns {"act_max": the
    statistics, "s": {(layer, norm): s}, "tokens": how many calibrated} for reports and plots."""
    if any(not isinstance(getattr(L, m), torch.Tensor) for L in weights.layers for _, ms in PAIRS for m in ms):
        raise ValueError("smoothing needs the unquantized matrices: smooth before quantizing")
    ids = check_calibration(ids, weights.config.vocab_size)
    stats = calibrate(weights, ids, ops.channel_max, window=window)
    scales = {}
    for i, L in enumerate(weights.layers):
        for norm, names in PAIRS:
            mats = [getattr(L, m) for m in names]
            s = ops.smooth(stats[(i, norm)], mats, alpha)
            g, mats = ops.fold_smoothing(getattr(L, norm), mats, s)
            setattr(L, norm, g)
            for m, w in zip(names, mats):
                setattr(L, m, w)
            scales[(i, norm)] = s
    for L in weights.layers:      # fused copies of the old matrices (a runner's): fuse_projections fuses again
        L.wqkv = L.w_gate_up = None
    return {"act_max": stats, "s": scales, "tokens": len(ids)}
