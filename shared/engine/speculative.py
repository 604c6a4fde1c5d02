"""Speculative decoding in the engine (day 35): a drafter guesses, the target verifies, the cache
rolls back what the target rejected.

The loop itself is the track's `speculative` (day 35, else shared/reference/speculative.py); this
file gives it its parts: the drafter by name (`ngram`: day 34's `ngram_draft`; `draft`: day 36's
`ModelDraft`, a draft model on its own runner and static cache, graphed like the target), day
33's Verifier on the runner's cache (graphed like the decode step when the engine uses graphs),
the greedy pick the plain loop uses (the track's `sample` at temperature 0, so ties break the
same way; with graphs it is captured at the end of the verify's graph), and the counters the
footer reports. With greedy decoding the tokens are plain
decoding's.

K per round (day 38): the loop is given the most drafts a round may take, and the drafter it
calls is a `Pacer` that drafts only the K the track's `AdaptiveK` chose (`spec_k="auto"`: K in
AUTO_K, chosen from the running acceptance; a number: AdaptiveK(k, k), K fixed). The pacer
learns each round's outcome from the loop's own counters, so day 35's loop needs no hook, and
the controller's counts per draft position go into the footer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from shared.engine.attention import StaticCache
from shared.engine.runner import ModelRunner

METHODS = ("ngram", "draft")   # draft: a draft model (day 36), the target's first layers or --draft-model
DEFAULT_K = 4               # drafted tokens per target step
MAX_K = 16                  # one graph per K + 1 (and length bucket); day 11's skinny linear covers T <= 64
AUTO_K = (1, 8)             # spec_k="auto": K chosen per round in this range (day 38)
# What one draft adds to a round, in rounds without drafts (day 38's cost model: a round of K drafts
# takes 1 + cost * K). An assumption, not a measurement: the verify reads the weights once for all
# its rows, so a row costs its attention and arithmetic; n-gram drafting is a host lookup. A draft
# model adds its own decode step per draft (draft_cost). Day 39 measures the real ratio.
ROW_COST = 0.1


def check_options(method: str | None, k: int | str) -> None:
    """One line for a method or a K the engine cannot run, before any model loads."""
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown speculative method {method!r}: use one of {', '.join(METHODS)}")
    if k == "auto":
        return
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"spec_k (--spec-k, tokens drafted per target step) must be an integer in 1..{MAX_K} "
                         f"or 'auto', got {k!r}")


def parse_k(text: str) -> int | str:
    """--spec-k's text as K: "auto" or an integer (its range is check_options')."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--spec-k takes a number of drafts per target step (1..{MAX_K}) or auto, "
                         f"got {text!r}") from None


def step_params(weights) -> int:
    """Parameters one decode step reads: every layer's matrices and the lm_head (one embedding row)."""
    layers = sum(t.numel() for L in weights.layers for t in (L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down))
    return layers + weights.lm_head.numel()


def draft_cost(draft_weights, target_weights) -> float:
    """What one draft of a draft model adds to a round: its verify row + one draft decode step,
    which (bandwidth-bound, like the target's) costs what it reads, relative to a target step."""
    return ROW_COST + step_params(draft_weights) / step_params(target_weights)


def check_draft(method: str | None, draft_layers: int | None = None, draft_model=None) -> None:
    """One line for draft options the engine cannot use, before any model loads (the depth is
    checked against the model in load_draft)."""
    if method != "draft":
        if draft_layers is not None or draft_model is not None:
            raise ValueError("draft_layers and draft_model (--draft-layers, --draft-model) go with "
                             "speculative='draft' (--speculative draft)")
        return
    if draft_layers is None and draft_model is None:
        raise ValueError("speculative='draft' needs a draft: draft_layers=L, the target's first L layers "
                         "(--draft-layers L), or draft_model=DIR, a smaller Llama with its tokenizer (--draft-model DIR)")
    if draft_layers is not None and (isinstance(draft_layers, bool) or not isinstance(draft_layers, int)
                                     or draft_layers < 1):
        raise ValueError(f"draft_layers (--draft-layers) must be an integer >= 1, got {draft_layers!r}")
    if draft_model is not None and not (Path(draft_model).expanduser() / "config.json").is_file():
        raise ValueError(f"draft model {str(draft_model)!r}: no config.json there -- give an HF Llama folder "
                         "that uses the target's tokenizer (--draft-model DIR)")


def _vocabulary(model_dir: Path):
    """The tokenizer's token -> id table and special tokens, to compare a draft with its target."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    tok = json.loads(path.read_text(encoding="utf-8"))
    return tok.get("model", {}).get("vocab"), [(t.get("id"), t.get("content")) for t in tok.get("added_tokens", [])]


def load_draft(ops, target, target_dir, *, draft_layers: int | None, draft_model, dtype, device):
    """The draft's weights: the target's first draft_layers layers + its final norm and head (a
    self-draft, sharing the target's tensors), or the HF Llama folder draft_model (its first
    draft_layers layers when given), refused in one line unless it has the target's vocabulary."""
    base, what = target, "the target"
    if draft_model is not None:
        path = Path(draft_model).expanduser()
        what, vocab = f"the draft model {path}", target.config.vocab_size
        config = ops.load_config(path)
        if config.vocab_size != vocab:
            raise ValueError(f"draft model {path}: a vocabulary of {config.vocab_size} tokens, the target's has {vocab}: "
                             "a draft must use the target's tokenizer")
        mine = _vocabulary(path)
        if mine is None:
            raise ValueError(f"draft model {path}: no tokenizer.json to check against the target's: a draft must "
                             "use the target's tokenizer")
        if mine != _vocabulary(Path(target_dir)):
            raise ValueError(f"draft model {path}: its tokenizer.json differs from the target's ({target_dir}): "
                             "a draft must use the target's tokenizer")
        base = ops.load_model(path, dtype=dtype, device=device)
        base.inv_freq = ops.rope_frequencies(base.config).to(device)
    n = len(base.layers)
    layers = n if draft_layers is None else draft_layers
    if not 1 <= layers <= n:
        raise ValueError(f"draft_layers (--draft-layers) {layers} is out of range: {what} has {n} layers, use 1..{n}")
    return base if base is not target and layers == n else ops.self_draft(base, layers)


@dataclass
class SpecStats:
    """What one speculative generation did: target forwards after the prefill (verifies), drafted
    tokens they scored, and how many of those the target accepted (the loop's counters); the K
    asked of the drafter each round and the controller's counts per draft position (the Pacer's)."""
    method: str = "ngram"
    k: int | str = DEFAULT_K
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    ks: list[int] = field(default_factory=list)
    positions: object = None          # the controller's AcceptanceStats (day 38)

    def tokens_per_step(self, new_tokens: int) -> float:
        """New tokens after the first (the prefill's) per verify: 1.0 is plain decoding."""
        return (new_tokens - 1) / self.steps if self.steps else 0.0

    @property
    def acceptance(self) -> float:
        """Accepted over drafted: drafts after a round's first rejection count as not accepted
        (by_position is the per-draft rate day 38's formula uses)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def by_position(self) -> list[float]:
        return self.positions.by_position() if self.positions is not None else []

    def describe(self, new_tokens: int) -> str:
        k = f"K={self.k}"
        if self.k == "auto":
            k += f" ({AUTO_K[0]}..{AUTO_K[1]}" + (f", mean {sum(self.ks) / len(self.ks):.1f}" if self.ks else "") + ")"
        by = " ".join(f"{100 * r:.0f}%" for r in self.by_position())
        return (f"speculative {self.method} {k}: {self.tokens_per_step(new_tokens):.2f} tokens per target step, "
                f"{self.accepted}/{self.drafted} drafts accepted ({100 * self.acceptance:.0f}%)"
                + (f"; acceptance by draft position: {by}" if by else ""))


class Pacer:
    """draft(context, n) for day 35's loop, with K chosen per round: feed the controller the
    outcome of the round the loop finished since the last call (read from the loop's counters:
    steps, drafted and accepted grow once per verify), then draft min(n, controller.k) tokens.
    Host ints only, like the loop's own bookkeeping."""

    def __init__(self, draft, controller, stats: SpecStats):
        self.draft, self.controller, self.stats = draft, controller, stats
        self.seen = (0, 0, 0)                     # (steps, drafted, accepted) already fed

    def settle(self) -> None:
        s = self.stats
        if s.steps > self.seen[0]:
            self.controller.update(s.drafted - self.seen[1], s.accepted - self.seen[2])
            self.seen = (s.steps, s.drafted, s.accepted)

    def __call__(self, context: list[int], n: int) -> list[int]:
        self.settle()
        self.stats.ks.append(self.controller.k)
        k = min(n, self.controller.k)             # n: what the loop allows (its k, the tokens left)
        return list(self.draft(context, k))[:k]


def picking(graphs_cls, pick):
    """graphs_cls whose graphs end with `pick` (the greedy sample of each row): a replay returns the
    T picks, not [T, vocab] logits, so between a verify and the one read back of its round the host
    launches nothing (the sampler's own launches cost more host time than a small kernel's GPU time)."""
    def make(step, **kwargs):
        return graphs_cls(lambda T, bucket: pick(step(T, bucket)), **kwargs)
    return make


class Speculator:
    """One per runner and K: the Verifier's fixed buffers and graphs live as long as the runner."""

    def __init__(self, ops, runner, method: str, k: int | str, graphs_cls=None, draft_weights=None):
        check_options(method, k)
        self.ops, self.runner, self.method, self.k = ops, runner, method, k
        self.bounds = AUTO_K if k == "auto" else (k, k)
        most = self.bounds[1]                    # the most drafts a round may take: buffers and graphs
        greedy = self.greedy = lambda logits: ops.sample(logits, 0.0, 0, 1.0, None)
        if graphs_cls is not None:           # the pick inside the verify's graph: a replay returns T token ids
            graphs_cls = picking(graphs_cls, greedy)
            self.greedy = lambda out: out if not out.is_floating_point() else greedy(out)   # the prefill: logits
        self.verifier = ops.Verifier(runner, max_k=most, graphs_cls=graphs_cls)
        self.draft_weights = draft_weights
        self.cost = ROW_COST
        if method == "draft":              # the draft model: its own runner, static cache and graphs
            if draft_weights is None:
                raise ValueError("speculative='draft' needs the draft's weights (load_draft)")
            cache = StaticCache(ops, draft_weights.config, runner.backend.max_len, draft_weights.dtype, runner.device)
            self.draft_runner = ModelRunner(ops, draft_weights, cache, runner.device, graphs_cls=graphs_cls)
            self.draft = ops.ModelDraft(self.draft_runner, max_k=most)
            self.cost = draft_cost(draft_weights, runner.weights)
        else:
            self.draft = ops.ngram_draft

    def generate(self, prompt_ids: list[int], *, max_new_tokens: int, eos_token_ids: Iterable[int],
                 stats: SpecStats) -> Iterator[int]:
        """The loop's tokens; a new controller per generation (acceptance belongs to the text)."""
        ops = self.ops
        controller = ops.AdaptiveK(*self.bounds, cost=self.cost)
        stats.positions = controller.stats
        pacer = Pacer(self.draft, controller, stats)
        yield from ops.speculative(self.runner, prompt_ids, verify=self.verifier, draft=pacer, k=self.bounds[1],
                                   max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids,
                                   greedy=self.greedy, stats=stats)
        pacer.settle()                           # the last round
