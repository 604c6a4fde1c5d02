"""Greedy agreement of --quant w8a16 with the unquantized model on SmolLM2-135M, on the CPU reference
path (fp32 activations: dequantize, then matmul), for day 42's lesson. Writes agreement.json here.

    python notes/bench/cpu_day42/agreement.py          (a few minutes on a laptop CPU)

For each prompt: how many of the first 32 greedy tokens equal the fp32 model's before the first
difference. The GPU tier records the fp16 version (checkers/day_42, test_greedy_agreement_...).
"""
import datetime
import json
import sys
import time
from pathlib import Path

import torch

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a",
           "The three laws of thermodynamics are", "Water boils at", "In 1863, Abraham Lincoln",
           "The quick brown fox", "To make a cup of tea, first"]
NEW = 32
VARIANTS = {"per channel, lm_head int8": dict(quant="w8a16"),
            "per channel, lm_head kept": dict(quant="w8a16", quant_head=False),
            "groups of 64, lm_head int8": dict(quant="w8a16", quant_group=64),
            "groups of 64, lm_head kept": dict(quant="w8a16", quant_group=64, quant_head=False)}


def main() -> None:
    from shared.engine import Engine
    base = Engine("smollm2", track="solutions", dtype="fp32")
    assert base.reference_only, "this measures the CPU reference path"
    want = {p: list(base.generate_ids(base.prompt_ids(p), max_new_tokens=NEW, ignore_eos=True)) for p in PROMPTS}
    out = {"model": "SmolLM2-135M-Instruct", "path": "PyTorch reference on the CPU, fp32 activations",
           "new_tokens": NEW, "prompts": PROMPTS, "torch": torch.__version__,
           "date": datetime.date.today().isoformat(), "variants": {}}
    for name, kw in VARIANTS.items():
        t0 = time.time()
        e = Engine("smollm2", track="solutions", dtype="fp32", **kw)
        same = []
        for p in PROMPTS:
            got = list(e.generate_ids(e.prompt_ids(p), max_new_tokens=NEW, ignore_eos=True))
            same.append(next((i for i, (a, b) in enumerate(zip(got, want[p])) if a != b), NEW))
        out["variants"][name] = {"first_difference": same, "mean_tokens_equal": sum(same) / len(same),
                                 "prompts_all_equal": sum(s == NEW for s in same)}
        print(f"{name}: {same} ({time.time() - t0:.0f} s)", file=sys.stderr)
    (Path(__file__).parent / "agreement.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
