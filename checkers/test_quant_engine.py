"""The engine's quantized modes (shared/engine/quant.py): `--quant MODE`, `--quant-group`,
`--no-quant-head`, `--kv-int8` on generate and bench, `tinyinfer status`, and the CPU reference
path of w8a16 (dequantize, then matmul) against the model with dequantized weights, and of w8a8
(the activations quantized per token too) against a forward that quantizes them by hand."""
import pytest
import torch

from shared.course.testing import assert_cli_refuses
from shared.quant import QuantWeight, dequantize

BAD_QUANT = [["--quant", "int4"], ["--quant", "W8A16"], ["--quant", "W8A8"], ["--quant", "w4a16", "--quant-group", "48"],
             ["--quant", "gguf"], ["--quant-group", "64"], ["--no-quant-head"], ["--quant", "w8a16", "--quant-group", "24"],
             ["--quant", "w8a8", "--quant-group", "8"], ["--quant", "w8a8", "--quant-group", "128"],
             ["--quant", "w8a16", "--quant-group", "8"], ["--quant", "w8a16", "--quant-group", "128"],
             ["--quant", "w8a16", "--kv-int8", "--no-paged"], ["--kv-int8", "--no-cache"],
             ["--kv-int8", "--speculative", "ngram"]]


def test_generate_refuses_bad_quant_flags_in_one_line(tiny_model, capsys):
    """Unknown modes, a w4a16 group that is no multiple of 32, gguf on a model folder without a GGUF,
    companions without --quant,
    a group that is no multiple of 16 or does not divide the tiny model's 64, --kv-int8 without the
    paged cache: exit 2, one line."""
    assert_cli_refuses(["generate", "hi", "--model", str(tiny_model), "--max-new-tokens", "2"], BAD_QUANT, capsys)


def test_bench_refuses_bad_quant_flags_in_one_line(tiny_model, capsys):
    assert_cli_refuses(["bench", "--model", str(tiny_model), "--no-hf", "--no-naive"], BAD_QUANT[:8], capsys)
    assert_cli_refuses(["bench", "--model", str(tiny_model), "--speculative", "ngram"], [["--quant", "w8a16"]], capsys)


@pytest.mark.parametrize("mode,group,head,match", [
    ("gguf", 32, True, "drop --quant-group"), ("gguf", None, False, "drop --quant-group"),
    ("w4a16", 16, True, "multiple of 32"), ("w4a16", 40, True, "multiple of 32")])
def test_4bit_options_refused_in_one_line(mode, group, head, match):
    from shared.engine.quant import check_options
    with pytest.raises(ValueError, match=match):
        check_options(mode, group, head)


def test_w4a16_group_must_divide_every_matrix():
    """The tiny model's in sizes are 64 and 96: groups of 64 do not divide w_down's 96."""
    from types import SimpleNamespace
    from shared.engine.quant import check_model, check_options
    c = SimpleNamespace(num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64, intermediate_size=96,
                        vocab_size=256)
    with pytest.raises(ValueError, match="w_down"):
        check_model(check_options("w4a16", 64), c, kernels=True)
    check_model(check_options("w4a16", 32), c, kernels=True)


def test_generate_with_int8_weights_on_the_cpu(tiny_model, capsys):
    """--quant w8a16 without a GPU: the reference path says what it runs and generates."""
    from shared import cli
    assert cli.main(["generate", "Deep learning is", "--model", str(tiny_model), "--max-new-tokens", "4",
                     "--quant", "w8a16", "--quant-group", "32", "--no-quant-head"]) == 0
    err = capsys.readouterr().err
    assert "w8a16" in err and "groups of 32" in err and "lm_head kept" in err, err


def test_status_lists_what_each_quant_mode_uses(capsys):
    from shared import cli
    assert cli.main(["status", "--track", "solutions"]) == 0
    out = capsys.readouterr().out
    assert "--quant w8a16" in out and "--quant w8a8" in out and "quantize_weights" in out \
        and "--quant w4a16" in out and "--quant gguf" in out and "--kv-int8" in out and "paged_decode_attention_int8" in out \
        and "solutions/day_44" in out, out[-1500:]


def with_dequantized_matrices(engine, quantized, dequantize):
    """`engine` (unquantized) with every layer matrix, and the lm_head if it is quantized there, replaced
    by `quantized`'s, dequantized, then fused again: the model the quantized engine must compute."""
    from shared.weights import fuse_projections
    for Lq, Ld in zip(quantized.weights.layers, engine.weights.layers):
        for name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            setattr(Ld, name, dequantize(getattr(Lq, name)))
        Ld.wqkv = Ld.w_gate_up = None
    if not isinstance(quantized.weights.lm_head, torch.Tensor):     # gguf keeps the head as loaded
        engine.weights.lm_head = dequantize(quantized.weights.lm_head)
    fuse_projections(engine.weights)
    return engine


def test_engine_w8a16_is_the_model_with_dequantized_weights(tiny_model, track):
    """Engine(quant="w8a16") on the CPU reference path: every matrix the fused step reads is a
    QuantWeight (the parts views of the fused ones), norms and the embedding stay, and the greedy
    tokens and logits are those of the fp32 engine whose matrices are dequantized."""
    from shared.engine import Engine
    q = Engine(str(tiny_model), track=track, dtype="fp32", quant="w8a16")
    L = q.weights.layers[0]
    assert all(isinstance(t, QuantWeight) for t in (L.wqkv, L.wq, L.wk, L.wv, L.wo, L.w_gate_up, L.w_gate, L.w_up,
                                                     L.w_down, q.weights.lm_head))
    assert isinstance(q.weights.embed, torch.Tensor) and isinstance(L.attn_norm, torch.Tensor)
    d = with_dequantized_matrices(Engine(str(tiny_model), track=track, dtype="fp32"), q, dequantize)
    ids = q.prompt_ids("int8 weights, fp32 activations")
    assert list(q.generate_ids(ids, max_new_tokens=12)) == list(d.generate_ids(ids, max_new_tokens=12))
    torch.testing.assert_close(q.forward(ids), d.forward(ids), atol=1e-4, rtol=1e-4)


def graph_rows(mode):
    """bench's CUDA-graph row comes first where there is a GPU to capture on (the cached row always runs)."""
    return [f"graph {mode}"] if torch.cuda.is_available() else []


def test_bench_runs_the_quantized_engine_in_the_same_run(tiny_model, tmp_path):
    """bench --quant w8a16 on the CPU: the quantized engine's rows, its bytes per token (weights at
    a quarter of fp32's), and its greedy agreement with the unquantized engine."""
    from shared import bench
    r = bench.run(str(tiny_model), dtype="fp32", contexts=[8], prompt_lengths=[8], prompt_tokens=8, new_tokens=4,
                  out_dir=tmp_path, hf=False, naive=False, progress=False, quant="w8a16")
    q = r["meta"]["quant"]
    assert q["rows"] == graph_rows("w8a16") + ["cached w8a16"] and all(row in r["results"] for row in q["rows"])
    fp32, int8 = r["meta"]["decode_bytes"]["unquantized"], q["decode_bytes"]
    assert fp32["weights"] == 4 * int8["weights"] and int8["scales"] > 0
    assert 0 <= q["greedy_tokens_equal_to_unquantized"] <= 4
    assert "w8a16" in (tmp_path / "bench.md").read_text()


def test_generate_with_int8_activations_on_the_cpu(tiny_model, capsys):
    """--quant w8a8 without a GPU: the reference path says what it runs and generates."""
    from shared import cli
    assert cli.main(["generate", "Deep learning is", "--model", str(tiny_model), "--max-new-tokens", "4",
                     "--quant", "w8a8", "--quant-group", "32"]) == 0
    err = capsys.readouterr().err
    assert "w8a8" in err and "per-token int8 activations" in err and "groups of 32" in err, err


def test_engine_w8a8_quantizes_every_linear_input_per_token(tiny_model, track):
    """Engine(quant="w8a8") on the CPU reference path: the weights are w8a16's, marked for int8
    activations (views stay views); its logits are those of the dequantized model run with every
    linear's input replaced by its per-token int8 round trip -- and not those of w8a16."""
    from shared import reference
    from shared.engine import Engine
    from shared.engine.quant import MATRICES
    q = Engine(str(tiny_model), track=track, dtype="fp32", quant="w8a8")
    w16 = Engine(str(tiny_model), track=track, dtype="fp32", quant="w8a16")
    L = q.weights.layers[0]
    assert all(getattr(L, n).int8_activations for n in MATRICES) and q.weights.lm_head.int8_activations
    assert L.wq.q.data_ptr() == L.wqkv.q.data_ptr(), "wq must stay a view of wqkv"
    assert not w16.weights.layers[0].wqkv.int8_activations

    def fake_w8a8(x, w):                      # quantize x per token by hand, then day 41's oracle
        xq, s = reference.quantize_activations(x)
        return reference.linear_w8a16((xq.float() * s).to(x.dtype), w.with_activations("float"))

    ids = q.prompt_ids("int8 activations, one scale per token")
    ours = q.forward(ids)
    q.ops._cache["linear"] = fake_w8a8         # the CPU path runs day 16's forward: every matrix goes through linear
    want = q.forward(ids)
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, w16.forward(ids), atol=1e-6, rtol=0), "w8a8 must differ from w8a16"


def test_bench_runs_the_w8a8_engine(tiny_model, tmp_path):
    from shared import bench
    r = bench.run(str(tiny_model), dtype="fp32", contexts=[8], prompt_lengths=[8], prompt_tokens=8, new_tokens=4,
                  out_dir=tmp_path, hf=False, naive=False, progress=False, quant="w8a8")
    q = r["meta"]["quant"]
    assert q["rows"] == graph_rows("w8a8") + ["cached w8a8"] and q["decode_bytes"]["scales"] > 0


def test_generate_with_an_int8_kv_cache_on_the_cpu(tiny_model, capsys):
    """--kv-int8 without a GPU: the reference path (quantize on write, dequantize, attend) says so."""
    from shared import cli
    assert cli.main(["generate", "Deep learning is", "--model", str(tiny_model), "--max-new-tokens", "4",
                     "--kv-int8", "--quant", "w8a16"]) == 0
    err = capsys.readouterr().err
    assert "int8 KV cache" in err and "paged KV cache" in err and "w8a16" in err, err


def test_engine_int8_kv_cache_on_the_cpu_follows_fp32(tiny_model, track):
    """Engine(kv_int8=True) on the CPU reference path: the reference Int8PagedCache (int8 pools, fp16
    scales, no pool in the model dtype) and the fp32 engine's greedy tokens on the tiny model."""
    from shared import reference
    from shared.engine import Engine
    q, d = Engine(str(tiny_model), track=track, dtype="fp32", kv_int8=True), Engine(str(tiny_model), track=track,
                                                                                  dtype="fp32")
    ids = q.prompt_ids("an int8 KV cache")
    assert list(q.generate_ids(ids, max_new_tokens=6)) == list(d.generate_ids(ids, max_new_tokens=6))
    backend = q.runner(len(ids) + 6).backend
    assert isinstance(backend, reference.Int8PagedCache) and backend.k.dtype == torch.int8 \
        and backend.k_scale.dtype == torch.float16, type(backend)
    assert "int8 KV cache" in q.describe()


def test_bench_runs_the_int8_kv_engine_in_the_same_run(tiny_model, tmp_path):
    """bench --kv-int8 on the CPU: the int8-KV engine's rows, its KV bytes (an fp32 model's rows of
    16: 4 x 16 bytes become 16 + 2) and its greedy agreement."""
    from shared import bench
    r = bench.run(str(tiny_model), dtype="fp32", contexts=[8], prompt_lengths=[8], prompt_tokens=8, new_tokens=4,
                  out_dir=tmp_path, hf=False, naive=False, progress=False, kv_int8=True)
    q = r["meta"]["quant"]
    assert q["rows"] == graph_rows("kv-int8") + ["cached kv-int8"] and q["flags"] == "--kv-int8"
    fp32, int8 = r["meta"]["decode_bytes"]["unquantized"], q["decode_bytes"]
    assert int8["kv"] * 64 == fp32["kv"] * 18 and int8["weights"] == fp32["weights"]
    assert 0 <= q["greedy_tokens_equal_to_unquantized"] <= 4
    assert "--kv-int8" in (tmp_path / "bench.md").read_text()


def test_engine_w4a16_is_the_model_with_dequantized_weights(tiny_model, track):
    """Engine(quant="w4a16") on the CPU reference path: every matrix is a Q4Weight (the parts row
    views of the fused ones), and the greedy tokens and logits are those of the fp32 engine whose
    matrices are the dequantized 4-bit ones."""
    from shared.engine import Engine
    from shared.q4 import Q4Weight, dequantize as dequantize_q4
    q = Engine(str(tiny_model), track=track, dtype="fp32", quant="w4a16")
    L = q.weights.layers[0]
    assert all(isinstance(t, Q4Weight) for t in (L.wqkv, L.wq, L.wk, L.wv, L.wo, L.w_gate_up, L.w_gate, L.w_up,
                                                 L.w_down, q.weights.lm_head))
    assert L.wq.qs.data_ptr() == L.wqkv.qs.data_ptr()
    d = with_dequantized_matrices(Engine(str(tiny_model), track=track, dtype="fp32"), q, dequantize_q4)
    ids = q.prompt_ids("four-bit weights")
    assert list(q.generate_ids(ids, max_new_tokens=10)) == list(d.generate_ids(ids, max_new_tokens=10))
    torch.testing.assert_close(q.forward(ids), d.forward(ids), atol=1e-4, rtol=1e-4)


def _tiny_gguf(tiny_model, tmp_path):
    """A copy of the tiny model folder with a Q4_1 GGUF of its layer matrices (llama.cpp's q/k row
    order), written with the gguf package: what `tinyinfer model prepare` keeps beside SmolLM2."""
    import shutil
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from shared.models import GGUF_LAYER
    d = tmp_path / "tiny_gguf"
    shutil.copytree(tiny_model, d)
    t = load_file(str(d / "model.safetensors"))
    heads, kv = 4, 2
    w = gguf.GGUFWriter(str(d / "model.Q4_1.gguf"), "llama")

    def permute(a, n):        # HF -> llama.cpp (the inverse of shared.models._unpermute)
        return a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
    for i in range(2):
        for short, hf in GGUF_LAYER.items():
            if short.endswith("norm"):
                continue
            a = t[f"model.layers.{i}.{hf}.weight"].astype(np.float32)
            a = permute(a, heads) if short == "attn_q" else permute(a, kv) if short == "attn_k" else a
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q4_1)
            w.add_tensor(f"blk.{i}.{short}.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return d


def test_engine_gguf_reads_the_q4_1_blocks_as_they_are(tiny_model, tmp_path, track):
    """Engine(quant="gguf") on the CPU reference path, on a tiny GGUF written here: every layer
    matrix a Q4Weight whose dequantized values are the gguf package's own dequantization (q/k rows
    back in HF's order); the greedy tokens those of the fp32 engine with those dequantized matrices."""
    from shared.engine import Engine
    from shared.q4 import Q4Weight, dequantize as dequantize_q4
    model = _tiny_gguf(tiny_model, tmp_path)
    q = Engine(str(model), track=track, dtype="fp32", quant="gguf")
    L = q.weights.layers[0]
    assert all(isinstance(t, Q4Weight) for t in (L.wqkv, L.wq, L.wk, L.wv, L.wo, L.w_gate_up, L.w_down))
    assert isinstance(q.weights.lm_head, torch.Tensor)              # not in the file: as loaded
    d = Engine(str(model), track=track, dtype="fp32")
    err = (dequantize_q4(L.wq) - d.weights.layers[0].wq).abs().max()
    assert err < 0.5 * float(L.wq.d.float().abs().max()) + 1e-6, f"wq off by {float(err)}: q/k rows in the wrong order?"
    with_dequantized_matrices(d, q, dequantize_q4)
    ids = q.prompt_ids("blocks as they are")
    assert list(q.generate_ids(ids, max_new_tokens=8)) == list(d.generate_ids(ids, max_new_tokens=8))


def test_gguf_of_another_block_type_is_refused(tiny_model, tmp_path):
    """A GGUF whose layer matrices are Q8_0: one line naming the types found and the supported one."""
    import gguf
    import numpy as np
    from shared.engine.q4_model import load_gguf
    from shared.engine import Engine
    e = Engine(str(tiny_model), dtype="fp32")
    path = tmp_path / "q8.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    a = np.zeros((64, 64), dtype=np.float32)
    w.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="Q8_0.*Q4_1|Q4_1.*Q8_0") as err:
        load_gguf(e.weights, path)
    assert "\n" not in str(err.value)
