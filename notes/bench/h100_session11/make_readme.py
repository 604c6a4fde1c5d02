"""Writes README.md of this folder from its call files (run: python3 notes/bench/h100_session11/make_readme.py)."""
import json
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from readme_tables import gemv_table  # noqa: E402  (notes/bench/readme_tables.py)


def read(name):
    return (HERE / name).read_text()


def peer_line(name, fname):
    b = json.loads(read(fname))
    ours, peer = b["results"]["graph"], b["peers"]["torch.compile"]
    return (f"| {name} | {ours['decode_tok_s']:.1f} | {ours['ms_per_token']:.3f} | {b['meta']['gpu_ms_per_token']:.3f} | "
            f"{ours['roofline_pct']:.1f}% | {peer['decode_tok_s']:.1f} | **{ours['decode_tok_s'] / peer['decode_tok_s']:.2f}x** | "
            f"{peer['greedy_tokens_equal_to_ours']} |")


def pdl_summary(fname):
    return re.search(r"^\S+: (plain .*)$", read(fname), re.M).group(1)


def main():
    b1, b2 = json.loads(read("call1_bench.json")), json.loads(read("call2_bench.json"))
    d47, s47 = b1["day_47_4bit_vs_fp16_llama_1b.json"], b2["day_47_4bit_vs_fp16_smollm2.json"]
    g47 = b1["day_47_w4a16_gemv.json"]["shapes"]
    agree = b2["day_47_greedy_agreement_smollm2.json"]
    tier = re.search(r"^\d+ failed, \d+ passed.*$", read("call1_day47_pytest.log"), re.M).group(0)
    model_tier = re.search(r"^\d+ passed.*$", read("call2_day47_model_pytest.log"), re.M).group(0)
    chain = [re.match(r"mode (\d) \((.*)\): ([\d.]+) us", line).groups() for line in read("call1_pdl_gemv_chain.txt").splitlines()
             if line.startswith("mode")]
    lines = [
        "# H100 session 11 (2026-12-07): day 47 as one fused W4A8 kernel per GEMV, PDL, the peers",
        "",
        "One NVIDIA H100 80GB HBM3 (no H200 came; the session's first eleven starts were refused). Every number below is read",
        "from the files of this folder by `make_readme.py`; each ratio's baseline ran in the same call. The",
        "scripts are in `lab/` (experiments and the two call scripts, not part of the course).",
        "",
        "- `call1_*` (no model): branch day47-w4a8 as an overlay: day 47's GPU tier and test_quant_engine's 4-bit",
        "  tests, sanitize 47; PDL on a chain of 32 fp16 GEMVs (`lab/pdl.py`) and in the engine's 1B step",
        "  (`lab/pdl_engine.py`); `tinyinfer bench --model llama-1b --peer`.",
        "- `call2_*` (SmolLM2 from the GGUF): `tinyinfer bench --peer`, day 47's model tier, PDL in the SmolLM2 step.",
        "- `call3_*`: PDL in the SmolLM2 step again, five rounds (call 2's two rounds disagreed).",
        "- `call4_*`: the branch's fused kernels per 1B shape against day 54 (fp16) and day 42 (int8), with block",
        "  sizes 128 / 512 and a variant that loads each warp's first nibbles before the prologue (`lab/q4_pre.py`).",
        "",
        "## Issue 14: ours vs the torch.compile peer (same GPU, same weights, same run)",
        "",
        "| model | ours tok/s | wall ms/token | GPU ms/token | % of roofline | peer tok/s | ours / peer | greedy tokens equal (of 64) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        peer_line("Llama-3.2-1B shape", "call1_bench_llama_1b_peer.json"),
        peer_line("SmolLM2-135M", "call2_bench_smollm2_peer.json"),
        "",
        "## Day 47, one fused W4A8 kernel per decode GEMV (branch day47-w4a8)",
        "",
        f"- GPU tier: `{tier}`. The two failures: the 1B decode bench and test_quant_engine's w4a16 twin",
        "  (greedy tokens part at token 6: the decode GEMVs round x to int8, the fp32 twin does not).",
        f"- Model tier: `{model_tier}`. Sanitize 47: racecheck and synccheck clean (`call1_summary.txt`).",
        f"- 1B decode: fp16 {d47['fp16_tok_s']:.0f}, w4a16 {d47['w4a16_tok_s']:.0f} tok/s = "
        f"**{d47['w4a16_speedup']:.2f}x** (floor {d47['floor']}).",
        f"- SmolLM2 decode: fp16 {s47['fp16_tok_s']:.0f}, w4a16 {s47['w4a16_tok_s']:.0f} "
        f"({s47['w4a16_speedup']:.2f}x), gguf {s47['gguf_tok_s']:.0f} ({s47['gguf_speedup']:.2f}x).",
        "- `linear` alone (no norm; graph, cold L2): " + ", ".join(f"{s} {r['speedup']:.2f}x" for s, r in g47.items()) + ".",
        f"- GGUF vs the prepared fp16 folder, greedy: {agree['gguf_prompts_identical']} of {len(agree['prompts'])} prompts "
        f"identical for {agree['tokens']} tokens; first divergence at " + ", ".join(map(str, agree["gguf_first_divergence"])) + ".",
        "",
        "Per fused GEMV, us (call 4). The W4A8 kernel wins where the matrix is tall (gate_up, lm_head) and loses",
        "where K is long (down: every block quantizes all 8192 values of x before its first weight):",
        "",
        gemv_table(read("call4_q4_fused_per_shape.txt"), ["fp16 day54 fused", "int8 day42 fused", "q4 day47 (this branch)",
                                                          "q4 day47 bs128", "q4 day47 bs512", "q4 day47 + preload"]),
        "",
        "## PDL (programmatic dependent launch)",
        "",
        "- A chain of 32 fp16 GEMVs, graph-replayed: " + "; ".join(f"{label} {us} us" for _, label, us in chain) + " per GEMV.",
        "- Every numba kernel of the decode step starting with `griddepcontrol.launch_dependents; griddepcontrol.wait`",
        "  (patched into numba's PTX) and launched with programmatic stream serialization, against the same",
        "  cubins launched plainly:",
        f"  - 1B: {pdl_summary('call1_pdl_engine_llama_1b.txt')}",
        f"  - SmolLM2, five rounds: {pdl_summary('call3_pdl_engine_smollm2_5_rounds.txt')}",
        f"  - (call 2's two rounds: {pdl_summary('call2_pdl_engine_smollm2.txt')}: one pdl round was an outlier.)",
        "",
        "A kernel's launch is not where its fixed cost goes: overlapping it saves 1-3%.",
    ]
    (HERE / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
