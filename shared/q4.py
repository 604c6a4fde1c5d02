"""4-bit weights as a type (day 47): a `Q4Weight` holds GGML's Q4_1 blocks -- 32 weights of a row
as 4-bit unsigned values with an fp16 scale d and an fp16 minimum m -- so `linear(x, w)` can
dispatch on it as it does on day 40's `QuantWeight`.

    value = d * nibble + m        nibble in 0..15, d and m per block (per group of `group_size`)

The bytes of a block, as a GGUF file stores them (20 bytes for 32 weights: 5 bits a weight):

    | d (fp16) | m (fp16) | byte 0 ... byte 15 |       byte j = weight j (low nibble) | weight j + 16 (high)

`Q4Weight` keeps the same bytes, split into three arrays so a kernel reads the nibbles of a block
with one aligned 16-byte load (in the file they sit 4 bytes past a 20-byte boundary): `qs` [out,
in // 2] (block b of row n at qs[n, 16 b : 16 b + 16], exactly the file's 16 bytes), `d` and `m`
fp16 [out, in // group_size]. Splitting moves bytes; no value changes (no requantization).

Given, not part of the day: `dequantize` (the meaning), `from_gguf_blocks` (the file's bytes to a
Q4Weight) and `quantize_q4` (fp16 weights to the same Q4_1 style groups, `--quant w4a16`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32            # weights per block: 16 bytes of nibbles
BLOCK_BYTES = 20      # a GGUF Q4_1 block: fp16 d, fp16 m, 16 bytes of nibbles
LEVELS = 15           # the largest nibble


@dataclass(frozen=True, eq=False)
class Q4Weight:
    """A 4-bit weight [out, in] (PyTorch Linear layout) in Q4_1 blocks.

    qs:         uint8 [out, in // 2]: block b of row n is qs[n, 16 b : 16 b + 16]; its byte j holds
                weight 32 b + j in the low nibble and weight 32 b + j + 16 in the high nibble
    d, m:       float16 [out, in // group_size]: value = d * nibble + m
    group_size: columns that share d and m, a multiple of 32 (GGUF: 32)
    dtype:      the dtype activations and outputs take (the model's)

    Shapes and dtypes only are checked (building one reads no value: capture-safe).
    """
    qs: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor
    group_size: int = BLOCK
    dtype: torch.dtype = torch.float16

    def __post_init__(self):
        qs, d, m, g = self.qs, self.d, self.m, self.group_size
        if qs.dtype != torch.uint8 or qs.dim() != 2:
            raise ValueError(f"Q4Weight.qs must be uint8 [out, in // 2], got {qs.dtype} {tuple(qs.shape)}")
        if isinstance(g, bool) or not isinstance(g, int) or g < BLOCK or g % BLOCK:
            raise ValueError(f"Q4Weight: group_size must be a multiple of {BLOCK} (the nibbles come in blocks of "
                             f"{BLOCK}), got {g!r}")
        out, cols = qs.shape[0], 2 * qs.shape[1]
        if cols % g:
            raise ValueError(f"Q4Weight: group_size {g} does not divide in = {cols}: a row is whole blocks")
        want = (out, cols // g)
        for name, t in (("d", d), ("m", m)):
            if t.dtype != torch.float16 or tuple(t.shape) != want:
                raise ValueError(f"Q4Weight.{name} must be float16 {want}, got {t.dtype} {tuple(t.shape)}")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.qs.shape[0], 2 * self.qs.shape[1]))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qs, self.d, self.m))

    @property
    def bytes_per_weight(self) -> float:
        return self.nbytes / (2 * self.qs.numel())

    def rows(self, start: int, stop: int) -> "Q4Weight":
        """Rows start..stop-1, sharing this weight's memory (as QuantWeight.rows)."""
        if not 0 <= start <= stop <= self.qs.shape[0]:
            raise ValueError(f"Q4Weight.rows({start}, {stop}) of a weight with {self.qs.shape[0]} rows")
        return Q4Weight(self.qs[start:stop], self.d[start:stop], self.m[start:stop], self.group_size, self.dtype)


def nibbles(qs: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in // 2] -> the 4-bit values [out, in] as uint8, in column order."""
    out = qs.shape[0]
    b = qs.view(out, -1, BLOCK // 2)
    return torch.cat([b & 0xF, b >> 4], dim=-1).view(out, -1)


def pack(q: torch.Tensor) -> torch.Tensor:
    """The 4-bit values [out, in] (0..15, any integer dtype) -> qs uint8 [out, in // 2] (nibbles' inverse)."""
    out = q.shape[0]
    b = q.to(torch.uint8).view(out, -1, BLOCK)
    return (b[..., :BLOCK // 2] | (b[..., BLOCK // 2:] << 4)).reshape(out, -1).contiguous()


def dequantize(w: Q4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """d * nibble + m in float32, each group with its own d and m, as `dtype` [out, in]."""
    out, cols = w.shape
    groups = cols // w.group_size
    q = nibbles(w.qs).float().view(out, groups, w.group_size)
    return (q * w.d.float().view(out, groups, 1) + w.m.float().view(out, groups, 1)).view(out, cols).to(dtype)


def linear_q4(x: torch.Tensor, w: Q4Weight) -> torch.Tensor:
    """The oracle: x @ dequantize(w).T in float32, rounded once to x's dtype."""
    return (x.float() @ dequantize(w, torch.float32).T).to(x.dtype)


# ---- the GGUF file's blocks --------------------------------------------------------------------------
def from_gguf_blocks(raw: torch.Tensor, dtype: torch.dtype = torch.float16) -> Q4Weight:
    """A GGUF Q4_1 tensor's bytes, uint8 [out, (in // 32) * 20] (what gguf's reader gives as
    `tensor.data`), -> Q4Weight. d and m are the blocks' own fp16 bits; the 16 nibble bytes are
    copied as they are. A row that is not whole blocks is refused (one line)."""
    if not isinstance(raw, torch.Tensor) or raw.dtype != torch.uint8 or raw.dim() != 2:
        got = f"{raw.dtype} {tuple(raw.shape)}" if isinstance(raw, torch.Tensor) else type(raw).__name__
        raise ValueError(f"from_gguf_blocks takes the uint8 bytes [out, blocks * {BLOCK_BYTES}], got {got}")
    out, nbytes = raw.shape
    if nbytes == 0 or nbytes % BLOCK_BYTES:
        raise ValueError(f"a Q4_1 row is whole blocks of {BLOCK_BYTES} bytes ({BLOCK} weights); this one has "
                         f"{nbytes} bytes")
    b = raw.contiguous().view(out, nbytes // BLOCK_BYTES, BLOCK_BYTES)
    d = b[..., 0:2].contiguous().view(torch.float16).view(out, -1)
    m = b[..., 2:4].contiguous().view(torch.float16).view(out, -1)
    qs = b[..., 4:].reshape(out, -1).contiguous()
    return Q4Weight(qs, d.contiguous(), m.contiguous(), BLOCK, dtype)


def to_gguf_blocks(w: Q4Weight) -> torch.Tensor:
    """from_gguf_blocks' inverse for group_size 32: the 20-byte blocks a GGUF file stores."""
    if w.group_size != BLOCK:
        raise ValueError(f"a GGUF Q4_1 block has one d and m per {BLOCK} weights, this weight per {w.group_size}")
    out = w.qs.shape[0]
    d = w.d.contiguous().view(torch.uint8).view(out, -1, 2)
    m = w.m.contiguous().view(torch.uint8).view(out, -1, 2)
    return torch.cat([d, m, w.qs.view(out, -1, BLOCK // 2)], dim=-1).view(out, -1)


# ---- --quant w4a16: fp16 weights to the same groups -------------------------------------------------
def _next16(t: torch.Tensor, up: bool) -> torch.Tensor:
    """The next fp16 value above (up) or below each element of fp16 t."""
    return torch.nextafter(t, torch.full_like(t, float("inf") if up else float("-inf")))


def quantize_q4(w: torch.Tensor, group_size: int = BLOCK) -> Q4Weight:
    """w [out, in] fp16/fp32 -> Q4Weight: per group of `group_size` columns, m = the minimum (fp16,
    rounded down), d = (max - m) / 15 (fp16, rounded up so the grid covers the group),
    nibble = clamp(round((w - m) / d), 0, 15). Every weight comes back within d / 2 (a constant
    group: d = 0, nibbles 0). One-line ValueErrors for a bad weight or group size."""
    from shared.quant import check_finite
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.dtype not in (torch.float16, torch.float32):
        got = f"{w.dtype} {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"quantize_q4 takes a float16 / float32 weight [out, in], got {got}")
    out, cols = w.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < BLOCK \
            or group_size % BLOCK or cols % group_size:
        raise ValueError(f"--quant-group {group_size!r} must be a multiple of {BLOCK} that divides in = {cols} "
                         f"(e.g. {next((g for g in (128, 64, 32) if cols % g == 0), BLOCK)})")
    if w.numel() == 0:
        raise ValueError(f"quantize_q4 of an empty weight {tuple(w.shape)}: nothing to quantize")
    check_finite(w)
    wf = w.float().view(out, cols // group_size, group_size)
    lo, hi = wf.amin(-1), wf.amax(-1)
    m = lo.half()
    m = torch.where(m.float() > lo, _next16(m, up=False), m)
    d = ((hi - m.float()) / LEVELS).half()
    for _ in range(3):                          # fp16 rounding may leave the top short: step d up
        d = torch.where(m.float() + LEVELS * d.float() < hi, _next16(d, up=True), d)
    df = d.float().unsqueeze(-1)
    q = torch.where(df > 0, torch.round((wf - m.float().unsqueeze(-1)) / torch.where(df > 0, df, 1)), 0)
    q = q.clamp(0, LEVELS).view(out, cols)
    return Q4Weight(pack(q), d.contiguous(), m.contiguous(), group_size, w.dtype)
