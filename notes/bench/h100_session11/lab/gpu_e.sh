#!/usr/bin/env bash
# session 11 call E (after D staged part.a): SmolLM2 from the GGUF; day 47 model tiers on branch day47-w4a8; SmolLM2
# bench with the torch.compile peer (issue 14).
# Carry: ["lab/g10", "lab/g11", ".carry/zb", ".ovl_land3"]  (no .whl: over 64 MiB with zb; /tmp/site is there from D)   timeout 590
set -u
S=$OUT/summary.txt
[ -f /root/gguf/part.a ] || { echo "fresh machine: no part.a" >> $S; exit 3; }
nvidia-smi --query-gpu=name --format=csv,noheader >> $S
cat /root/gguf/part.a .carry/zb/part.b | python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.LZMAFile(sys.stdin.buffer), open('/root/gguf/model.gguf', 'wb'))" && sha256sum -c <(echo "$(cat .carry/zb/sha256)  /root/gguf/model.gguf") >> $S 2>&1
rm -rf /tmp/t && mkdir /tmp/t && tar --exclude=./.carry --exclude=./.whl --exclude=./.ovl_land3 -cf - . | tar -xf - -C /tmp/t && cp -r .ovl_land3/. /tmp/t/
cd /tmp/t && while read -r f; do rm -f "$f"; done < .deleted; export PYTHONPATH=/tmp/site:/tmp/t && mkdir -p build/bench
timeout 120 python3 -m shared.cli model prepare --from-gguf /root/gguf/model.gguf --force > $OUT/prepare.log 2>&1; echo "prepare rc $?" >> $S
timeout 120 python3 -m shared.cli bench --track solutions --model smollm2 --no-naive --peer --out $OUT/bench_smollm2 > $OUT/bench_smollm2.log 2>&1; echo "bench smollm2 rc $?" >> $S; grep -iE "tok/s|peer|decode" $OUT/bench_smollm2/bench.md 2>/dev/null | head -12 >> $S
timeout 280 python3 -m pytest --track solutions checkers/day_47 -m "model" -q -p no:cacheprovider -rfE > $OUT/e_pytest.log 2>&1; grep -E "^(FAILED|ERROR|E  )|passed|failed" $OUT/e_pytest.log | tail -30 >> $S
python3 -c "import json,glob,os; print(json.dumps({os.path.basename(f): json.load(open(f)) for f in glob.glob('build/bench/*.json')}, indent=1))" > $OUT/bench_e.json
timeout 90 python3 lab/g11/pdl_engine.py smollm2 > $OUT/pdl_engine.txt 2>&1; tail -8 $OUT/pdl_engine.txt >> $S
echo done >> $S
