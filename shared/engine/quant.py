"""The engine's quantized modes: `--quant MODE` (weights) and `--kv-int8` (the KV cache).

A mode is a way to store what a decode step reads, chosen at load time; the forward pass does not
change (`linear`, `norm_linear` and `linear_add` dispatch on the weight's type). Each mode belongs
to the day that builds it; only the modes whose day exists run, the others say when they come.

- w8a16 (day 42): every matrix of the fused model int8 with float32 scales, symmetric, one scale
  per row (`--quant-group G`: per group of G columns), the lm_head too unless `--no-quant-head`;
  activations stay in the model dtype. Quantized once at load, after fuse_projections, by the
  track's `quantize_weights` (day 42) with its `quantize_int8` (day 40). The CPU reference path
  runs it too (dequantize, then matmul): the oracle a learner without a GPU compares against.
- w8a8 (day 43): the same int8 weights and scales, marked `activations="int8"`: every `linear`
  quantizes its input per token and multiplies int8 by int8 in int32 (dp4a), then scales. The
  decode step's fused names take it unfused (day 43's norm_linear / linear_add: the track's norm,
  day 43's linear, the epilogue). The CPU reference quantizes the activations per token too, then
  an exact integer product, then the scales.
- w8a8-smooth (day 46): w8a8 after SmoothQuant-style smoothing (shared/engine/smooth.py): at load,
  per-channel activation maxima from calibration tokens (by default the shipped text's last 512),
  then the track's `smooth` and `fold_smoothing` move part of each outlier channel into the
  weights that read it (alpha: `--smooth-alpha`, default 0.5), folding 1/s into the RMSNorm weight
  before them -- nothing extra at run time. Then exactly w8a8: the same kernels.
- --kv-int8 (day 44): the paged KV cache stored as int8 rows with one fp16 scale per token and KV
  head (`ops.Int8PagedCache`: `paged_kv_write_int8` quantizes on write, `paged_decode_attention_int8`
  dequantizes in registers, a prompt attends over its fresh k, v). It goes with any --quant mode
  or none, not with --speculative (day 33's verify reads fp16 pools); it needs the paged cache
  (not --no-paged / --no-cache) and, on a GPU or with
  --simulate, a finished day 44. The CPU reference runs it too (quantize, dequantize, attend).
- w4a16 (day 47): every matrix of the fused model 4-bit, Q4_1 style (an fp16 scale d and minimum
  m per group of 32 columns, `--quant-group G` for another multiple of 32: value = d * nibble + m),
  quantized at load by shared/q4.py's quantize_q4; the lm_head too unless `--no-quant-head`.
- gguf (day 47): the model folder's GGUF file read as it is: its Q4_1 blocks become the layer
  matrices without a requantization (shared/engine/q4_model.py); the embedding / lm_head and the
  norms stay as the engine loads them (SmolLM2's embedding is Q8_0 in the file). Both run day 47's
  `linear` (the 4-bit GEMV at T == 1; T > 1 dequantizes per call) and, on day 54's decode step,
  day 47's unfused norm_linear / linear_add around it. The CPU reference dequantizes, then multiplies.
Checks happen before any model loads (the mode, the flags) or right after its config is read
(a group that does not divide a matrix), so a mistake is one line and no kernel has run.
"""
from __future__ import annotations

from dataclasses import dataclass

# mode -> (the day that builds it, what it stores)
MODES = {
    "w8a16": (42, "int8 weights, activations in the model dtype"),
    "w8a8": (43, "int8 weights and per-token int8 activations (dp4a)"),
    "w8a8-smooth": (46, "w8a8 after SmoothQuant-style smoothing (calibrated at load)"),
    "w4a16": (47, "4-bit weights in groups, 16-bit activations"),
    "gguf": (47, "the GGUF file's own Q4_1 blocks, read directly"),
}
RUNS = ("w8a16", "w8a8", "w8a8-smooth", "w4a16", "gguf")     # the modes this engine has today
INT8_ACTIVATIONS = ("w8a8", "w8a8-smooth")   # day 43's linear: activations int8 per token
SMOOTH_MODES = ("w8a8-smooth",)               # day 46: smoothed before quantizing
DEFAULT_ALPHA = 0.5                            # SmoothQuant's default migration strength
Q4_MODES = ("w4a16", "gguf")      # day 47: Q4Weight matrices
Q4_DAY = 47
Q4_BLOCK = 32                     # 4-bit weights come in blocks of 32: a group is a multiple of it
KV_INT8_DAY = 44
VEC = 16                          # int8 weights per 16-byte load: a group must be a multiple of it
MAX_IN = 11_312                   # day 42's int8 GEMVs keep x in shared memory (48 KB): at most this many columns


@dataclass(frozen=True)
class QuantOptions:
    mode: str                     # one of RUNS
    group_size: int | None        # None: one scale per row
    head: bool                    # quantize the lm_head too
    alpha: float | None = None    # w8a8-smooth: the migration strength (None for the other modes)

    def describe(self) -> str:
        if self.mode == "gguf":
            return "gguf (the GGUF's Q4_1 blocks as they are; embedding, lm_head and norms as loaded)"
        if self.mode == "w4a16":
            return (f"w4a16 ({MODES['w4a16'][1]}, groups of {self.group_size or Q4_BLOCK}, "
                    f"lm_head {'4-bit' if self.head else 'kept'})")
        scales = "per channel" if self.group_size is None else f"groups of {self.group_size}"
        smooth = f", alpha {self.alpha:g}" if self.alpha is not None else ""
        return f"{self.mode} ({MODES[self.mode][1]}{smooth}, {scales}, lm_head {'int8' if self.head else 'kept'})"

    def quantize_kwargs(self) -> dict:
        """The options for quantize_weights: symmetric, per channel or per group."""
        if self.group_size is None:
            return dict(scheme="symmetric", granularity="channel", head=self.head)
        return dict(scheme="symmetric", granularity="group", group_size=self.group_size, head=self.head)


def coming(mode: str) -> str:
    day, what = MODES[mode]
    return f"--quant {mode} ({what}) is coming on day {day}: only --quant {' / '.join(RUNS)} runs now"


def check_options(mode: str | None, group_size: int | None = None, head: bool = True,
                  kv_int8: bool = False, smooth_alpha: float | None = None) -> QuantOptions | None:
    """The weight options as given, checked before any model loads: one-line ValueErrors. kv_int8
    (--kv-int8) goes with any of them; its own checks are check_kv_int8's. smooth_alpha goes with
    w8a8-smooth only (None: DEFAULT_ALPHA)."""
    if not isinstance(kv_int8, bool):
        raise ValueError(f"kv_int8 is True or False, got {kv_int8!r}")
    if smooth_alpha is not None and mode not in SMOOTH_MODES:
        raise ValueError("--smooth-alpha goes with --quant " + " / ".join(SMOOTH_MODES))
    if mode is None:
        if group_size is not None or not head:
            raise ValueError("--quant-group and --no-quant-head go with --quant " + " / ".join(RUNS))
        return None
    if mode not in MODES:
        raise ValueError(f"unknown --quant {mode!r}: use " + ", ".join(MODES) + f" (today: {', '.join(RUNS)})")
    if mode not in RUNS:
        raise ValueError(coming(mode))
    if mode == "gguf" and (group_size is not None or not head):
        raise ValueError("--quant gguf runs the file's own blocks (32 weights each) and keeps its lm_head as loaded: "
                         "drop --quant-group / --no-quant-head (or use --quant w4a16)")
    if mode == "w4a16" and group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                                       or group_size < Q4_BLOCK or group_size % Q4_BLOCK):
        raise ValueError(f"--quant-group for w4a16 must be a multiple of {Q4_BLOCK} (4-bit weights come in blocks of "
                         f"{Q4_BLOCK}), e.g. 32, 64 or 128; got {group_size}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < VEC or group_size % VEC):
        raise ValueError(f"--quant-group must be a multiple of {VEC} (a 16-byte load of int8 weights stays in one "
                         f"group), e.g. 64 or 128; got {group_size}")
    if mode in SMOOTH_MODES:
        from shared.reference.smooth import check_alpha
        return QuantOptions(mode, group_size, head, check_alpha(DEFAULT_ALPHA if smooth_alpha is None else smooth_alpha))
    return QuantOptions(mode, group_size, head)


def check_kv_int8(kv_int8: bool, *, use_cache: bool | None = None, paged: bool | None = None,
                  speculative: str | None = None) -> None:
    """--kv-int8 stores the paged cache in int8: it needs a cache and the paged one; speculative
    decoding's verify (day 33) writes and reads the pools as fp16 ones, so not with it (one line)."""
    if kv_int8 and speculative:
        raise ValueError("--kv-int8 does not go with --speculative yet: the verify pass (day 33) reads the KV pool "
                         "in the model dtype; drop one of them")
    if kv_int8 and use_cache is False:
        raise ValueError("--kv-int8 stores the KV cache in int8: drop --no-cache")
    if kv_int8 and paged is False:
        raise ValueError("--kv-int8 stores the paged KV cache in int8 (day 44): drop --no-paged")


def check_kv_track(kv_int8: bool, track: str, reference_only: bool) -> None:
    """On a GPU or in the simulator --kv-int8 runs day 44's kernels: the day must be finished."""
    if not kv_int8 or reference_only:
        return
    from shared.course import registry
    if KV_INT8_DAY not in registry.finished(track):
        raise ValueError(f"--kv-int8 on the {track} track needs a finished day {KV_INT8_DAY} (the int8 KV write and "
                         "decode attention): finish it, or run without a GPU and --simulate (the CPU reference)")


def matrices(config) -> dict[str, tuple[int, int]]:
    """[out, in] of every matrix a fused layer and the head multiply, by name."""
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return {"wqkv": (q + 2 * kv, c.hidden_size), "wo": (c.hidden_size, q),
            "w_gate_up": (2 * c.intermediate_size, c.hidden_size), "w_down": (c.hidden_size, c.intermediate_size),
            "lm_head": (c.vocab_size, c.hidden_size)}


def check_model(options: QuantOptions | None, config, kernels: bool) -> None:
    """What the model must have for these options, from its config alone (before any kernel runs):
    a group size that divides the `in` of every matrix it quantizes; with kernels (a GPU or the
    simulator, not the CPU reference), rows short enough for the int8 GEMVs' shared memory."""
    if options is None or options.mode == "gguf":      # gguf: the file's shapes, checked as it loads
        return
    for name, (_, cols) in matrices(config).items():
        if name == "lm_head" and not options.head:
            continue
        group = Q4_BLOCK if options.mode == "w4a16" and options.group_size is None else options.group_size
        if options.mode == "w4a16" and cols % group:
            raise ValueError(f"--quant w4a16: groups of {group} do not divide {name}'s in = {cols} of this model "
                             f"(rows are whole groups): use --quant-group with a multiple of {Q4_BLOCK} that divides "
                             f"{cols}" + ("" if name != "lm_head" else ", or --no-quant-head"))
        if options.group_size is not None and cols % options.group_size:
            raise ValueError(f"--quant-group {options.group_size} does not divide {name}'s in = {cols} of this model: "
                             f"use a group size that divides {cols} (e.g. {next(g for g in (128, 64, 32, 16) if cols % g == 0 or g == 16)}), "
                             "or drop --quant-group for one scale per row")
        if kernels and options.mode == "w8a16" and cols > MAX_IN:
            raise ValueError(f"--quant {options.mode}: {name}'s in = {cols} is more than the int8 GEMV keeps in shared "
                             f"memory ({MAX_IN} columns)")


def check_track(options: QuantOptions | None, track: str, reference_only: bool) -> None:
    """The days a mode needs on this track (the CPU reference path needs none)."""
    if options is None or reference_only:
        return
    from shared.course import registry
    if options.mode in Q4_MODES:
        if Q4_DAY not in registry.finished(track):
            raise ValueError(f"--quant {options.mode} on the {track} track needs a finished day {Q4_DAY} (linear for "
                             "4-bit weights): finish it, or run without a GPU and --simulate (the CPU reference)")
        return
    if options.mode in INT8_ACTIVATIONS:
        if 43 not in registry.finished(track):
            raise ValueError(f"--quant {options.mode} on the {track} track needs a finished day 43 (linear for int8 activations): "
                             "finish it, or run without a GPU and --simulate (the CPU reference)")
        return
    if 41 not in registry.finished(track):
        raise ValueError(f"--quant {options.mode} on the {track} track needs a finished day 41 (linear for int8 "
                         "weights): finish it, or run without a GPU and --simulate (the CPU reference)")


MATRICES = ("wqkv", "wq", "wk", "wv", "wo", "w_gate_up", "w_gate", "w_up", "w_down")


def int8_activations(weights):
    """Mark every QuantWeight of the model W8A8 (the same tensors: views stay views): `linear` then
    quantizes its input per token. Returns weights."""
    from shared.quant import QuantWeight

    def mark(w):
        return w.with_activations("int8") if isinstance(w, QuantWeight) else w
    for L in weights.layers:
        for name in MATRICES:
            setattr(L, name, mark(getattr(L, name)))
    weights.lm_head = mark(weights.lm_head)
    return weights


def apply(ops, weights, options: QuantOptions | None, model_dir=None, calibration=None, track=None):
    """Quantize the model in place, once, at load time (after fusing): returns weights. gguf reads
    the GGUF file of `model_dir` (check_gguf has found it before the model loaded). w8a8-smooth
    smooths first (shared/engine/smooth.py) with the track's day 46 names, on the calibration
    token ids given; `weights.smoothing` keeps what it computed."""
    if options is None:
        return weights
    if options.mode in SMOOTH_MODES:
        from shared.engine import smooth
        weights.smoothing = smooth.smooth_model(smooth.smoothing_ops(track), weights, calibration, options.alpha)
    if options.mode in Q4_MODES:
        from shared.engine import q4_model
        if options.mode == "gguf":
            return q4_model.load_gguf(weights, q4_model.check_gguf(model_dir))
        return q4_model.quantize_model(weights, options.group_size or Q4_BLOCK, options.head)
    from shared.weights import fuse_projections
    fuse_projections(weights)
    ops.quantize_weights(weights, ops, **options.quantize_kwargs())
    return int8_activations(weights) if options.mode in INT8_ACTIVATIONS else weights


def add_arguments(p) -> None:
    """--quant MODE, --quant-group G, --no-quant-head, --kv-int8 (generate and bench)."""
    later = ", ".join(f"{m} day {d}" for m, (d, _) in MODES.items() if m not in RUNS)
    p.add_argument("--quant", default=None, metavar="MODE", help=f"quantized weights: {' / '.join(RUNS)} (day 42: "
                   "int8 weights with a float32 scale per row, quantized at load time; day 43: w8a8, the activations "
                   "int8 per token too, dp4a; day 46: w8a8-smooth, w8a8 after SmoothQuant-style smoothing; day 47: "
                   "w4a16, 4-bit groups with an fp16 scale and minimum, and gguf, the model's GGUF Q4_1 blocks read "
                   "directly)" + (f"; coming: {later}" if later else ""))
    p.add_argument("--quant-group", type=int, default=None, metavar="G", help="--quant: a scale per group of G "
                   "columns (a multiple of 16 that divides every matrix's in) instead of one per row; w4a16: a multiple "
                   "of 32, default 32")
    p.add_argument("--no-quant-head", action="store_true", help="--quant: keep the lm_head in the model dtype "
                   "(it is quantized too by default)")
    p.add_argument("--kv-int8", action="store_true", help=f"an int8 KV cache (day {KV_INT8_DAY}): one int8 row and "
                   "an fp16 scale per token and KV head, about half the KV bytes; needs the paged cache")
    add_alpha_argument(p)


def add_alpha_argument(p) -> None:
    p.add_argument("--smooth-alpha", type=float, default=None, metavar="A", help="--quant w8a8-smooth: the share "
                   f"of each channel's range moved into the weights, 0..1 (default {DEFAULT_ALPHA})")


def int8_source(name: str, track: str, day: int):
    """Where a QuantWeight's `name` comes from: `day` (the day that made it take int8 weights) if it is
    finished -- a later day hands QuantWeights down to it, as day 54 does to day 42 and day 48 to
    day 41 -- else the reference."""
    from shared.course import registry
    return registry.Source(name, day if day in registry.finished(track) else None)


def status_lines(track: str) -> list[str]:
    """What each --quant mode uses on this track, or which day brings it (for `tinyinfer status`)."""
    from shared.course import registry
    fused = (registry.source("forward", track).day or 0) >= 54      # day 54's forward: norm_linear, linear_add
    lines = []
    for mode, (day, what) in MODES.items():
        if mode in Q4_MODES:
            ready = Q4_DAY in registry.finished(track)
            lines.append(f"  --quant {mode:<6} {what}" + (":" if ready else
                         f" (on the GPU it needs a finished day {Q4_DAY}; the CPU reference runs it now):"))
            load = "at load: the GGUF's Q4_1 blocks" if mode == "gguf" else "at load: quantize_q4 (shared/q4.py)"
            for name, role in (("linear", f"{load}; the 4-bit GEMV at T == 1, dequantize per call above"),
                               ("norm_linear", "decode: the track's norm, the 4-bit linear, RoPE / SwiGLU (unfused)"),
                               ("linear_add", "decode: the 4-bit linear, the residual add (unfused)")):
                src = int8_source(name, track, Q4_DAY)
                lines.append(f"      {name:<18} {src.describe(track):<22} {role}")
            continue
        if mode not in RUNS:
            lines.append(f"  --quant {mode:<6} coming on day {day} ({what})")
            continue
        if mode in SMOOTH_MODES:
            lines.append(f"  --quant {mode} {what}: at load, then w8a8's as above:")
            for name, role in (("channel_max", "calibration: max |x| per channel of each norm's output"),
                               ("smooth", "s per channel from those maxima and the weights' (alpha)"),
                               ("fold_smoothing", "1/s into the norm weight, s into the matrices' columns")):
                lines.append(f"      {name:<18} {registry.source(name, track).describe(track):<22} {role}")
            continue
        uses = [("quantize_weights", registry.source("quantize_weights", track), "at load: the fused model's matrices to int8"),
                ("quantize_int8", registry.source("quantize_int8", track), "the scales and int8 values")]
        int8_day = 43 if mode in INT8_ACTIVATIONS else 42     # the day whose norm_linear / linear_add take these weights
        linear_day = 43 if mode in INT8_ACTIVATIONS else 41
        if fused:
            fused_role = ("decode: the track's norm, W8A8 linear, the epilogue (unfused)" if mode in INT8_ACTIVATIONS else
                          "decode: norm, int8 GEMV, RoPE / SwiGLU")
            uses += [("norm_linear", int8_source("norm_linear", track, int8_day), fused_role),
                     ("linear_add", int8_source("linear_add", track, int8_day), "decode: int8 GEMV, residual add")]
        gemv = "prefill, verify, batches" if fused else "every int8 GEMV (the unfused forward)"
        if mode in INT8_ACTIVATIONS:
            gemv = "x to int8 per token, dp4a, scales: " + gemv
        uses += [("linear", int8_source("linear", track, linear_day), gemv),
                 ("decode_bytes", registry.source("decode_bytes", track), "bench: bytes per token, roofline")]
        ready = linear_day in registry.finished(track)
        lines.append(f"  --quant {mode:<6} {what}" + (":" if ready else
                     f" (on the GPU it needs a finished day {linear_day}; the CPU reference runs it now):"))
        lines += [f"      {name:<18} {src.describe(track):<22} {role}" for name, src, role in uses]
    ready = KV_INT8_DAY in registry.finished(track)
    lines.append("  --kv-int8      int8 KV rows, an fp16 scale per token and KV head" + (":" if ready else
                 f" (on the GPU it needs a finished day {KV_INT8_DAY}; the CPU reference runs it now):"))
    for name, role in (("Int8PagedCache", "the backend: int8 pools and scales, which attention each step runs"),
                       ("paged_kv_write_int8", "every step: quantize k, v on write"),
                       ("paged_decode_attention_int8", "decode: dequantize in registers"),
                       ("attention", "prefill: the prompt's fresh k, v (flash)")):
        lines.append(f"      {name:<28} {registry.source(name, track).describe(track):<22} {role}")
    return lines
