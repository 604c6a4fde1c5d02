#!/usr/bin/env bash
# session 11 call D (no model): branch day47-w4a8 as overlay: day 47 GPU tier + benches (not model) + test_quant_engine's
# 4-bit tests, sanitize 47, the 1B-shape bench with the torch.compile peer (issue 14), the per-shape fused table,
# PDL experiments (lab/g10/pdl.py: a GEMV chain; lab/g11/pdl_engine.py: day 54's GEMVs in the 1B step); stages part.a.
# Carry: [".whl", "lab/g9", "lab/g10", "lab/g11", ".ovl_land3", ".carry/za"]   timeout 590
set -u
S=$OUT/summary.txt
mkdir -p /root/gguf && cp .carry/za/part.a /root/gguf/ && echo staged-a >> $S
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
nvidia-smi --query-gpu=name --format=csv,noheader >> $S
rm -rf /tmp/t2 && mkdir /tmp/t2 && tar --exclude=./.whl --exclude=./.whl2 --exclude=./.ovl_land3 --exclude=./.carry -cf - . | tar -xf - -C /tmp/t2 && cp -r .ovl_land3/. /tmp/t2/
cd /tmp/t2 && while read -r f; do rm -f "$f"; done < .deleted; export PYTHONPATH=/tmp/site:/tmp/t2:/tmp/t2/lab/g9 && mkdir -p build/bench
( timeout 150 python3 -c "from shared import models; print(models.resolve('llama-1b'))" > $OUT/make1b.log 2>&1 ) &
timeout 200 python3 -m pytest --track solutions checkers/day_47 checkers/test_quant_engine.py -k "not test_quant_engine or w4a16 or gguf" -m "not model" -q -p no:cacheprovider -rfE > $OUT/d_pytest.log 2>&1; grep -E "^(FAILED|ERROR|E  )|passed|failed" $OUT/d_pytest.log | tail -20 >> $S
timeout 45 python3 -m shared.course.sanitize --track solutions 47 2>&1 | tail -3 >> $S
wait
python3 -c "import json,glob,os; print(json.dumps({os.path.basename(f): json.load(open(f)) for f in glob.glob('build/bench/*.json')}, indent=1))" > $OUT/bench_d.json
timeout 50 python3 lab/g10/pdl.py > $OUT/pdl.txt 2>&1; tail -6 $OUT/pdl.txt >> $S
timeout 120 python3 lab/g11/pdl_engine.py llama-1b > $OUT/pdl_engine.txt 2>&1; tail -8 $OUT/pdl_engine.txt >> $S
timeout 150 python3 -m shared.cli bench --track solutions --model llama-1b --no-naive --peer --out $OUT/bench1b > $OUT/bench1b.log 2>&1; echo "bench 1b rc $?" >> $S; grep -iE "tok/s|peer|decode" $OUT/bench1b/bench.md 2>/dev/null | head -12 >> $S
echo done >> $S
