"""Day 07 checker: load_config and load_model. Run: pytest checkers/day_07

Oracles: the published config.json values of SmolLM2-135M and Llama-3.2-1B (written here),
HF transformers' LlamaForCausalLM state_dict for the tiny model, and the official safetensors
loader for the bytes on disk. Broken model folders are made by editing a copy of the tiny model.
"""
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shared.config import ModelConfig, RopeScaling
from shared.course.testing import assert_close
from shared.weights import LAYER_NAMES, ModelWeights

ENGINE_FIELDS = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight"}

# Published config.json values (huggingface.co/HuggingFaceTB/SmolLM2-135M, meta-llama/Llama-3.2-1B).
SMOLLM2_JSON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "rms_norm_eps": 1e-05, "rope_theta": 100000, "rope_scaling": None, "max_position_embeddings": 8192,
    "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu",
    "torch_dtype": "bfloat16"}
SMOLLM2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                      num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                      max_position_embeddings=8192, tie_word_embeddings=True, rope_scaling=None,
                      bos_token_id=0, eos_token_ids=(0,))
LLAMA32_JSON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "max_position_embeddings": 131072, "tie_word_embeddings": True, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "torch_dtype": "bfloat16", "attention_bias": False}
LLAMA32 = ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                      num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
                      max_position_embeddings=131072, tie_word_embeddings=True,
                      rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), bos_token_id=128000, eos_token_ids=(128001,))


def transformers5_style(c):
    """The same config as transformers 5 writes it: theta and scaling inside `rope_parameters`."""
    c = dict(c)
    rope = dict(c.pop("rope_scaling") or {"rope_type": "default"})
    rope["rope_theta"] = c.pop("rope_theta")
    c["rope_parameters"] = rope
    return c


def with_changes(c, **changes):
    c = {**c, **changes}
    return {k: v for k, v in c.items() if v is not ...}


def write_config(tmp_path, config_json):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config_json, indent=2))
    return d


def assert_config(got, want, what):
    assert isinstance(got, ModelConfig), f"{what}: load_config must return a ModelConfig, got {type(got).__name__}"
    for field in ModelConfig.__dataclass_fields__:
        g, w = getattr(got, field), getattr(want, field)
        assert g == w, f"{what}: {field} = {g!r}, expected {w!r}"


# ---- load_config -----------------------------------------------------------------------------
CONFIGS = [
    ("smollm2_classic", SMOLLM2_JSON, SMOLLM2),
    ("smollm2_transformers5", transformers5_style(SMOLLM2_JSON), SMOLLM2),
    ("llama32_classic", LLAMA32_JSON, LLAMA32),
    ("llama32_transformers5", transformers5_style(LLAMA32_JSON), LLAMA32),
    ("llama32_old_type_key", with_changes(LLAMA32_JSON, rope_scaling={
        "type": "llama3", **{k: v for k, v in LLAMA32_JSON["rope_scaling"].items() if k != "rope_type"}}), LLAMA32),
    ("llama32_instruct_eos_list", with_changes(LLAMA32_JSON, eos_token_id=[128001, 128008, 128009]),
     ModelConfig(**{**LLAMA32.__dict__, "eos_token_ids": (128001, 128008, 128009)})),
    ("no_eos_no_kv_heads", with_changes(SMOLLM2_JSON, eos_token_id=..., num_key_value_heads=...),
     ModelConfig(**{**SMOLLM2.__dict__, "eos_token_ids": (), "num_kv_heads": 9})),
    ("head_dim_given_not_hidden_over_heads", with_changes(LLAMA32_JSON, head_dim=128),
     ModelConfig(**{**LLAMA32.__dict__, "head_dim": 128})),
]


@pytest.mark.parametrize("config_json,want", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_published_configs_parse(day, tmp_path, config_json, want):
    assert_config(day.load_config(write_config(tmp_path, config_json)), want, "load_config")


def test_tiny_model_config(day, tiny_model):
    """The tiny model's config.json is transformers-5 style, with llama3 scaling and GQA."""
    from shared.models import tiny_config_dict
    c = tiny_config_dict()
    want = ModelConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"], rms_norm_eps=c["rms_norm_eps"],
        rope_theta=c["rope_theta"], max_position_embeddings=c["max_position_embeddings"],
        tie_word_embeddings=c["tie_word_embeddings"],
        rope_scaling=RopeScaling(**{k: v for k, v in c["rope_scaling"].items() if k != "rope_type"}),
        bos_token_id=c["bos_token_id"], eos_token_ids=(c["eos_token_id"],))
    assert_config(day.load_config(tiny_model), want, "load_config(tiny)")


@pytest.mark.parametrize("kind", ["yarn", "linear", "dynamic"])
def test_unsupported_rope_scaling_raises(day, tmp_path, kind):
    scaling = {**LLAMA32_JSON["rope_scaling"], "rope_type": kind}
    d = write_config(tmp_path, with_changes(LLAMA32_JSON, rope_scaling=scaling))
    with pytest.raises(ValueError, match=kind):
        day.load_config(d)


# ---- load_model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_state(tiny_model):
    """The tiny model as HF transformers loads it (state_dict, fp32)."""
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def engine_tensors(w: ModelWeights):
    """{HF name: tensor} read back from ModelWeights (engine names -> HF names)."""
    assert isinstance(w, ModelWeights), f"load_model must return a ModelWeights, got {type(w).__name__}"
    out = {hf: getattr(w, eng) for eng, hf in ENGINE_FIELDS.items()}
    out["lm_head.weight"] = w.lm_head
    for i, layer in enumerate(w.layers):
        out.update({f"model.layers.{i}.{hf}": getattr(layer, eng) for hf, eng in LAYER_NAMES.items()})
    return out


def assert_weights(w, want: dict, dtype, device, what):
    got = engine_tensors(w)
    assert len(w.layers) == w.config.num_layers, f"{what}: {len(w.layers)} layers, config says {w.config.num_layers}"
    assert sorted(got) == sorted(want), f"{what}: tensors {sorted(set(want) - set(got))[:3]} missing"
    for name, expected in want.items():
        t = got[name]
        assert t.dtype == dtype, f"{what}: {name} is {t.dtype}, asked for {dtype}"
        assert t.device.type == torch.device(device).type, f"{what}: {name} is on {t.device}, asked for {device}"
        assert_close(t, expected.to(dtype), f"{what}: {name}", atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tiny_model_matches_transformers(day, tiny_model, hf_state, device, dtype):
    w = day.load_model(tiny_model, dtype=dtype, device=device)
    assert_weights(w, hf_state, dtype, device, f"load_model(tiny, {dtype})")
    assert w.lm_head.data_ptr() == w.embed.data_ptr(), \
        "tied embeddings: lm_head must BE the embed tensor (same storage), not a copy"


def tiny_files(tiny_model):
    return json.loads((tiny_model / "config.json").read_text()), load_file(str(tiny_model / "model.safetensors"))


def write_model(tmp_path, config_json, tensors, shards=1):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config_json, indent=2))
    names = sorted(tensors)
    for s in range(shards):
        part = {n: tensors[n].contiguous() for n in names[s::shards]}
        save_file(part, str(d / (f"model-{s + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors")))
    return d


def test_bf16_on_disk_is_cast(day, tmp_path, tiny_model, device):
    """SmolLM2 ships bf16: load it as fp32 (exact) and as fp16."""
    config, tensors = tiny_files(tiny_model)
    bf16 = {n: t.to(torch.bfloat16) for n, t in tensors.items()}
    d = write_model(tmp_path, config, bf16)
    want = {**bf16, "lm_head.weight": bf16["model.embed_tokens.weight"]}
    for dtype in (torch.float32, torch.float16):
        assert_weights(day.load_model(d, dtype=dtype, device=device), want, dtype, device, f"bf16 file as {dtype}")


def test_sharded_checkpoint(day, tmp_path, tiny_model, hf_state, device):
    """Big models split their tensors over several model-0000k-of-0000n.safetensors files."""
    config, tensors = tiny_files(tiny_model)
    d = write_model(tmp_path, config, tensors, shards=3)
    assert_weights(day.load_model(d, device=device), hf_state, torch.float32, device, "3-shard checkpoint")


def test_untied_lm_head_is_its_own_tensor(day, tmp_path, tiny_model, device):
    config, tensors = tiny_files(tiny_model)
    head = torch.randn(tensors["model.embed_tokens.weight"].shape, generator=torch.Generator().manual_seed(7))
    d = write_model(tmp_path, {**config, "tie_word_embeddings": False}, {**tensors, "lm_head.weight": head})
    w = day.load_model(d, device=device)
    assert_close(w.lm_head, head, "untied lm_head", atol=0, rtol=0)
    assert_close(w.embed, tensors["model.embed_tokens.weight"], "embed", atol=0, rtol=0)


def test_tied_checkpoint_that_also_stores_lm_head(day, tmp_path, tiny_model, device):
    """Some tied checkpoints store lm_head.weight anyway, and old ones store rotary_emb.inv_freq: ignore both."""
    config, tensors = tiny_files(tiny_model)
    extra = {"lm_head.weight": tensors["model.embed_tokens.weight"].clone(),
             "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    w = day.load_model(write_model(tmp_path, config, {**tensors, **extra}), device=device)
    assert w.lm_head.data_ptr() == w.embed.data_ptr(), "tied: lm_head must be the embed tensor"


def drop(name):
    return lambda cfg, t: t.pop(name)


def put(name, shape):
    """Add a tensor, or replace one with a wrong shape."""
    return lambda cfg, t: t.__setitem__(name, torch.zeros(shape))


BROKEN = [
    ("missing_layer_tensor", drop("model.layers.1.mlp.up_proj.weight"), "model.layers.1.mlp.up_proj.weight"),
    ("missing_final_norm", drop("model.norm.weight"), "model.norm.weight"),
    ("missing_untied_lm_head", lambda cfg, t: cfg.__setitem__("tie_word_embeddings", False), "lm_head.weight"),
    ("extra_layer", put("model.layers.2.self_attn.q_proj.weight", (64, 64)), "model.layers.2.self_attn.q_proj.weight"),
    ("extra_unknown", put("model.vision_tower.proj.weight", (4, 4)), "model.vision_tower.proj.weight"),
    ("k_proj_sized_like_q", put("model.layers.0.self_attn.k_proj.weight", (64, 64)),
     "model.layers.0.self_attn.k_proj.weight"),
    ("down_proj_transposed", put("model.layers.1.mlp.down_proj.weight", (96, 64)),
     "model.layers.1.mlp.down_proj.weight"),
    ("o_proj_transposed_q_sized", put("model.layers.0.self_attn.o_proj.weight", (32, 64)),
     "model.layers.0.self_attn.o_proj.weight"),
    ("norm_too_long", put("model.layers.1.post_attention_layernorm.weight", (65,)),
     "model.layers.1.post_attention_layernorm.weight"),
    ("embed_vocab_mismatch", put("model.embed_tokens.weight", (259, 64)), "model.embed_tokens.weight"),
    ("final_norm_2d", put("model.norm.weight", (1, 64)), "model.norm.weight"),
]


@pytest.mark.parametrize("break_it,name", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_model_dir_names_the_tensor(day, tmp_path, tiny_model, break_it, name):
    config, tensors = tiny_files(tiny_model)
    break_it(config, tensors)
    d = write_model(tmp_path, config, tensors)
    try:
        day.load_model(d)
    except NotImplementedError:
        raise
    except (KeyError, ValueError) as e:
        msg = str(e)
        assert name in msg, f"the error must name the tensor {name}; got: {msg!r}"
        return
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"raised {type(e).__name__}: {e} -- check every tensor against the config and raise "
                    f"KeyError/ValueError naming {name}")
    pytest.fail(f"loaded a broken model without error: {name} is missing, extra or mis-shaped -- "
                "check every name and shape against the config")


def test_missing_weights_file(day, tmp_path, tiny_model):
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(tiny_model / "config.json", d / "config.json")
    with pytest.raises(FileNotFoundError):
        day.load_model(d)


def test_smollm2_loads(day, smollm2, device):
    """The real model: bf16 on disk, 30 layers, tied; spot-check tensors against safetensors."""
    w = day.load_model(smollm2, dtype=torch.float16, device=device)
    assert_config(w.config, ModelConfig(**{**SMOLLM2.__dict__, "bos_token_id": 1, "eos_token_ids": (2,)}),
                  "load_model(smollm2).config")
    got = engine_tensors(w)
    with safe_open(str(smollm2 / "model.safetensors"), framework="pt") as ref:
        for name in ["model.embed_tokens.weight", "model.layers.29.mlp.down_proj.weight",
                     "model.layers.7.self_attn.k_proj.weight", "model.norm.weight"]:
            assert_close(got[name], ref.get_tensor(name).to(torch.float16), f"smollm2 {name}", atol=0, rtol=0)
    assert w.lm_head.data_ptr() == w.embed.data_ptr(), "tied: lm_head must be the embed tensor"


# ---- configs that are not a Llama, or not a config -------------------------------------------------
@pytest.mark.parametrize("changes,name", [
    ({"model_type": "gemma", "architectures": ["GemmaForCausalLM"]}, "gemma"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "qwen2"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "mistral"),
    ({"model_type": ..., "architectures": ["Gemma2ForCausalLM"]}, "Gemma2ForCausalLM")],
    ids=["gemma", "qwen2", "mistral", "architectures_only"])
def test_other_architectures_are_refused_by_name(day, tmp_path, changes, name):
    """Gemma, Qwen2, Mistral name their tensors as Llama does: loaded as a Llama they would run and
    generate nonsense. Read `model_type` and `architectures` and refuse them, by name."""
    d = write_config(tmp_path, with_changes(SMOLLM2_JSON, **changes))
    try:
        got = day.load_config(d)
    except NotImplementedError:
        raise
    except ValueError as e:
        assert name in str(e), f"the ValueError must name the architecture ({name}); got: {e}"
        return
    pytest.fail(f"a {name} config.json loaded as a Llama ({got}): check model_type and architectures")


BAD_VALUES = [
    ("zero_heads", {"num_attention_heads": 0}, "num_attention_heads"),
    ("negative_layers", {"num_hidden_layers": -2}, "num_hidden_layers"),
    ("string_number", {"hidden_size": "576"}, "hidden_size"),
    ("float_vocab", {"vocab_size": 49152.0}, "vocab_size"),
    ("bool_kv_heads", {"num_key_value_heads": True}, "num_key_value_heads"),
    ("kv_heads_not_dividing", {"num_key_value_heads": 4}, "num_key_value_heads"),
    ("missing_field", {"intermediate_size": ...}, "intermediate_size"),
]


@pytest.mark.parametrize("changes,key", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_bad_config_values_raise_value_error(day, tmp_path, changes, key):
    """Sizes are positive integers (not "576", not 49152.0, not true): a wrong one must stop here,
    with the file and the key, not as a crash deep in the forward pass."""
    d = write_config(tmp_path, with_changes(SMOLLM2_JSON, **changes))
    with pytest.raises(ValueError) as e:
        day.load_config(d)
    assert key in str(e.value) and "config.json" in str(e.value), \
        f"name the file and the key ({key}); got: {e.value}"


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b"{'vocab_size': 49152}", b"\xff\xfe{}", b""],
                         ids=["a_list", "python_not_json", "not_utf8", "empty"])
def test_config_that_is_not_a_json_object(day, tmp_path, content):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_bytes(content)
    with pytest.raises(ValueError) as e:
        day.load_config(d)
    assert "config.json" in str(e.value), f"name the file; got: {e.value}"
