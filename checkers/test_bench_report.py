"""The benchmark report's own pieces (no GPU needed): kernel names, the kernel table, bench.md."""
from shared import bench

NUMBA = ("_ZN9solutions6day_5412fused_linear14make_norm_gemv12_3clocals_3e16norm_gemv_kernelB2v1B92cw51cXTLSU"
         "wv1sDUaKthqaNgoKmjgOR3W3CwAkMXLaJtQYkOIgxJU0gCqOkEJoHkbttqdVhoqlspQGNFHSgJ5BnXagIAE5ArrayI")


def test_kernel_name_reads_numba_and_cpp_names():
    assert bench.kernel_name(NUMBA) == "norm_gemv_kernel"
    assert bench.kernel_name("_ZN8__main__12inner_kernelB2v1E") == "inner_kernel"
    cpp = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int> >(int, at::native::X)"
    assert bench.kernel_name(cpp).startswith("void at::native::") and len(bench.kernel_name(cpp)) <= 60


def report(kernels=None, error=None):
    point = {"context": 512, "decode_tok_s": 600.0}
    r = {"ttft_s": 0.02, "prefill_tok_s": 20000.0, "decode_tok_s": 600.0, "ms_per_token": 1.66, "roofline_pct": 5.0,
         "peak_allocated_bytes": 2 ** 30, "peak_reserved_bytes": 2 ** 30, "launches_per_token": 300.0,
         "launch_overhead_per_token_s": 1e-4, "decode_vs_context": [point], "prefill_vs_prompt": []}
    meta = {"model": "smollm2", "date": "2026-12-05", "gpu_name": "NVIDIA H200", "device": "cuda", "dtype": "float16",
            "track": "solutions", "prompt_tokens": 512, "new_tokens": 64, "warmup": 1, "weight_bytes_per_token": 2.7e8,
            "peak_bandwidth_bytes_s": 4.8e12, "gpu_ms_per_token": 1.5, "track_note": "", "contexts": [512],
            "kernels_per_token": kernels}
    if error:
        meta["kernels_error"] = error
    return {"meta": meta, "results": {"graph": r}, "peers": {}}


def test_bench_md_shows_where_the_time_goes():
    rows = [{"kernel": f"k{i}", "launches": 30.0, "us": 100.0 - i} for i in range(20)]
    md = bench.markdown(report(rows))
    assert "Where a decode token's GPU time goes" in md and "| `k0` | 30 | 100.0 |" in md
    assert "| 6 more | 180 |" in md, "the kernels past the top ones are summed in one row"
    total = sum(r["us"] for r in rows)
    assert f"{total:,.0f} us in 600 kernels" in md


def test_bench_md_without_a_breakdown_says_why_or_nothing():
    assert "Where a decode token" not in bench.markdown(report())
    assert "Kernel breakdown not measured: RuntimeError: no CUPTI" in bench.markdown(report(error="RuntimeError: no CUPTI"))
