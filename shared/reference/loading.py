"""Reference loaders: safetensors files, config.json -> ModelConfig, weights -> ModelWeights.

A model folder comes from anywhere, so every file is checked before it is used, and a problem is
one ModelFileError that names the file and what is wrong (the CLI prints it and exits 2).
`check_model` runs every check that needs no tensor data; `tinyinfer doctor` uses it.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

from shared.config import ModelConfig, RopeScaling
from shared.models import ModelFileError
from shared.weights import LAYER_NAMES, LayerWeights, ModelWeights

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
WEIGHT_DTYPES = ("F64", "F32", "F16", "BF16")   # a Llama's weights; anything else needs scales we lack
MAX_HEADER = 100_000_000   # the safetensors library's limit too
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


# ---- safetensors -------------------------------------------------------------------------------
def read_header(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} from a safetensors header, checked against the file: the rules of
    the safetensors format (and of day 06), each with a message that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "is a folder, not a file" if path.is_dir() else "missing")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ModelFileError(path, f"truncated: {size} bytes, not even the 8-byte header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ModelFileError(path, f"header length {n} is past the end of the file ({size} bytes): "
                                 "truncated, or not a safetensors file")
        if n > MAX_HEADER:
            raise ModelFileError(path, f"header length {n} is over the {MAX_HEADER} bytes safetensors allows")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ModelFileError(path, "the header nests too deeply to be a safetensors header") from None
    except DuplicateKey as e:
        raise ModelFileError(path, f"the header names {e} twice") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelFileError(path, f"the header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, f"the header must be a JSON object, not a {type(header).__name__}")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(path, "__metadata__ must map names to strings")
    out, spans, data = {}, [], size - 8 - n
    for name, info in header.items():
        what = f"tensor {name!r}"
        if not isinstance(info, dict):
            raise ModelFileError(path, f"{what}: must be an object with dtype, shape and data_offsets")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ModelFileError(path, f"{what}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_uint(d) for d in shape):
            raise ModelFileError(path, f"{what}: shape {shape!r} must be a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_uint(o) for o in offsets)):
            raise ModelFileError(path, f"{what}: data_offsets {offsets!r} must be [begin, end]")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise ModelFileError(path, f"{what}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, "
                                 f"shape {shape} of {dtype} needs {nbytes}")
        if offsets[1] > data:
            raise ModelFileError(path, f"{what}: data_offsets {offsets} end past the data ({data} bytes): "
                                 "the file is truncated or the header is wrong")
        out[name] = (dtype, tuple(shape))
        spans.append((offsets[0], offsets[1], name))
    end = 0   # the tensors must tile the data section: no overlap, no hole
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise ModelFileError(path, f"tensor {name!r} starts at data byte {begin}, expected {end}: "
                                 + ("it overlaps the tensor before it" if begin < end else "a hole before it"))
        end = stop
    if end < data:
        raise ModelFileError(path, f"{data - end} bytes after the last tensor belong to no tensor")
    return out


class DuplicateKey(ValueError):
    """A JSON object that names one key twice."""


def _unique_keys(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):  # JSON parsers disagree on which duplicate wins: refuse them all
        seen = set()
        raise DuplicateKey(repr(next(k for k, _ in pairs if k in seen or seen.add(k))))
    return d


def _uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .safetensors file (CPU tensors, file dtypes): read_header checks it,
    then the safetensors library loads it."""
    read_header(path)
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: the file changed since, or a rule not checked above
        raise ModelFileError(path, f"the safetensors library refuses it ({e})") from None


# ---- config.json -------------------------------------------------------------------------------
def read_json(path, missing_ok: bool = False) -> dict:
    """A JSON object from a model folder ({} for a missing file when missing_ok)."""
    path = Path(path)
    if not path.exists() and missing_ok:
        return {}
    if not path.is_file():
        raise ModelFileError(path, "is a folder, not a file" if path.is_dir() else "missing")
    try:
        c = json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise ModelFileError(path, "nests too deeply") from None
    except ValueError as e:
        raise ModelFileError(path, f"not UTF-8 JSON ({e})") from None
    if not isinstance(c, dict):
        raise ModelFileError(path, f"must be a JSON object, not a {type(c).__name__}")
    return c


def load_config(model_dir) -> ModelConfig:
    """Parse config.json (both the classic keys and transformers 5's `rope_parameters`), refusing
    other architectures and values a Llama cannot have."""
    path = Path(model_dir) / "config.json"
    c = read_json(path)
    _check_llama(path, c)
    missing = [k for k in REQUIRED if c.get(k) is None]
    if missing:
        raise ModelFileError(path, f"missing {', '.join(missing)}")

    def count(key, default=None) -> int:
        v = default if c.get(key) is None else c[key]
        if not (_uint(v) and v > 0):
            raise ModelFileError(path, f"{key} must be a positive integer, got {v!r}")
        return v

    def number(value, key) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ModelFileError(path, f"{key} must be a positive number, got {value!r}")
        return float(value)

    heads, hidden = count("num_attention_heads"), count("hidden_size")
    kv_heads = count("num_key_value_heads", heads)
    if heads % kv_heads:
        raise ModelFileError(path, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    if c.get("head_dim") is None and hidden % heads:
        raise ModelFileError(path, f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or rope
    if not isinstance(rope, dict) or not isinstance(scaling, dict):
        raise ModelFileError(path, "rope_parameters and rope_scaling must be objects")
    rs = None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        if kind != "llama3":
            raise ModelFileError(path, f"rope scaling {kind!r} is not supported (only 'llama3')")
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        f, lo, hi, orig = (number(scaling.get(k), f"rope_scaling.{k}") for k in keys)
        rs = RopeScaling(f, lo, hi, int(orig))
    eos = c.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
    bos = c.get("bos_token_id")
    if not all(_uint(i) for i in eos) or not (bos is None or _uint(bos)):
        raise ModelFileError(path, "bos_token_id and eos_token_id must be token ids")
    if not isinstance(c.get("tie_word_embeddings", False), bool):
        raise ModelFileError(path, f"tie_word_embeddings must be true or false, got {c['tie_word_embeddings']!r}")
    return ModelConfig(
        vocab_size=count("vocab_size"), hidden_size=hidden, intermediate_size=count("intermediate_size"),
        num_layers=count("num_hidden_layers"), num_heads=heads, num_kv_heads=kv_heads,
        head_dim=count("head_dim", hidden // heads),
        rms_norm_eps=number(c.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
        rope_theta=number(rope.get("rope_theta", c.get("rope_theta", 10000.0)), "rope_theta"),
        max_position_embeddings=count("max_position_embeddings", 2048),
        tie_word_embeddings=c.get("tie_word_embeddings", False), rope_scaling=rs,
        bos_token_id=bos, eos_token_ids=eos)


def _check_llama(path: Path, c: dict) -> None:
    """Refuse other architectures by name. Gemma, Qwen2, Mistral... use Llama's tensor names but
    not its math: loaded as a Llama they would run and silently generate nonsense."""
    kind, archs = c.get("model_type", "llama"), c.get("architectures") or ["LlamaForCausalLM"]
    if kind != "llama" or archs != ["LlamaForCausalLM"]:
        raise ModelFileError(path, f"model_type {kind!r}, architectures {archs}: not a Llama model "
                             "(tinyinfer runs LlamaForCausalLM only)")
    if c.get("hidden_act", "silu") != "silu":
        raise ModelFileError(path, f"hidden_act {c['hidden_act']!r}: a Llama MLP uses 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if c.get(key):
            raise ModelFileError(path, f"{key} is true: tinyinfer's Llama has no biases")


# ---- the weights ---------------------------------------------------------------------------------
def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for every tensor the model needs (lm_head only when untied)."""
    c = config
    hidden, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    layer = {"input_layernorm.weight": (hidden,), "self_attn.q_proj.weight": (q, hidden),
             "self_attn.k_proj.weight": (kv, hidden), "self_attn.v_proj.weight": (kv, hidden),
             "self_attn.o_proj.weight": (hidden, q), "post_attention_layernorm.weight": (hidden,),
             "mlp.gate_proj.weight": (c.intermediate_size, hidden), "mlp.up_proj.weight": (c.intermediate_size, hidden),
             "mlp.down_proj.weight": (hidden, c.intermediate_size)}
    shapes = {"model.embed_tokens.weight": (c.vocab_size, hidden), "model.norm.weight": (hidden,)}
    shapes.update({f"model.layers.{i}.{n}": s for i in range(c.num_layers) for n, s in layer.items()})
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, hidden)
    return shapes


def check_model(model_dir) -> tuple[ModelConfig, list[Path]]:
    """(config, safetensors files) after every check that reads no tensor data: config.json,
    each file's header against its size, and each tensor's name, dtype and shape against the config."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    found: dict[str, tuple[str, tuple[int, ...], Path]] = {}
    for f in files:
        for name, (dtype, shape) in read_header(f).items():
            if name in found:
                raise ModelFileError(f, f"tensor {name} is also in {found[name][2].name}")
            found[name] = (dtype, shape, f)
    layer_tensors = sum(n.startswith("model.layers.") for n in found)
    if config.num_layers > layer_tensors:  # before listing the expected names: there could be billions
        raise ModelFileError(model_dir / "config.json", f"num_hidden_layers is {config.num_layers}, "
                             f"but the safetensors files hold {layer_tensors} layer tensors in all")
    want = expected_shapes(config)
    ignored = {n for n in found if n.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")  # some tied checkpoints store the copy too
    missing = [n for n in want if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(model_dir, f"missing tensor {missing[0]}{more}")
    extra = [n for n in found if n not in want and n not in ignored]
    if extra:
        raise ModelFileError(found[extra[0]][2], f"unexpected tensor {extra[0]} (not part of a "
                             f"{config.num_layers}-layer Llama)")
    for name, shape in want.items():
        dtype, got, f = found[name]
        if got != shape:
            raise ModelFileError(f, f"tensor {name} has shape {list(got)}, config.json says {list(shape)}")
        if dtype not in WEIGHT_DTYPES:
            raise ModelFileError(f, f"tensor {name} is {dtype}; weights must be one of {', '.join(WEIGHT_DTYPES)}")
    return config, files


def load_model(model_dir, dtype: torch.dtype = torch.float32, device="cpu") -> ModelWeights:
    """check_model, then read the tensors, cast, move; tie lm_head if asked."""
    config, files = check_model(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_safetensors(f))

    def take(name):
        return tensors[name].to(device=device, dtype=dtype)

    embed = take("model.embed_tokens.weight")
    layers = [LayerWeights(**{eng: take(f"model.layers.{i}.{hf}") for hf, eng in LAYER_NAMES.items()})
              for i in range(config.num_layers)]
    lm_head = embed if config.tie_word_embeddings else take("lm_head.weight")
    return ModelWeights(config, embed, layers, take("model.norm.weight"), lm_head)
