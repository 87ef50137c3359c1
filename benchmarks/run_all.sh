#!/usr/bin/env bash
# Reproduce every number in benchmarks/RESULTS.md. Needs ../shared/data (or pass DATA=...).
# Usage: bash benchmarks/run_all.sh   (writes JSON to benchmarks/results/, data to $WORK)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
WORK=${WORK:-$(mktemp -d)}
OUT=benchmarks/results
mkdir -p "$OUT"

cascade data import routellm-gsm8k "$DATA/routellm" "$WORK/gsm_train.jsonl" --split train
cascade data import routellm-gsm8k "$DATA/routellm" "$WORK/gsm_test.jsonl" --split test
cascade data import routerbench "$DATA/routerbench-subset" "$WORK/rb_train.jsonl" --split train
cascade data import routerbench "$DATA/routerbench-subset" "$WORK/rb_test.jsonl" --split test
cascade data import alpacaeval "$DATA/alpacaeval-subset" "$WORK/alpaca_train.jsonl" --split train
cascade data import alpacaeval "$DATA/alpacaeval-subset" "$WORK/alpaca_test.jsonl" --split test

# GSM8K: hand-set text evaluators, then calibrated to 95% and 90% of GPT-4 quality.
cascade bench configs/bench/gsm8k.yaml "$WORK/gsm_test.jsonl" --json "$OUT/gsm8k_test.json" --plot "$OUT/gsm8k_test.png"
for r in 0.95 0.90; do
  cascade calibrate --method thresholds configs/bench/gsm8k.yaml "$WORK/gsm_train.jsonl" --test "$WORK/gsm_test.jsonl" \
    --target-quality $r --out "$WORK/gsm8k_cal_$r.yaml" --json "$OUT/gsm8k_calibrated_$r.json" || true
done

# RouterBench: the hand-set ladder on test, then calibrated on train, reported on test.
cascade bench configs/bench/routerbench.yaml "$WORK/rb_test.jsonl" --json "$OUT/routerbench_test.json" --plot "$OUT/routerbench_test.png"
for t in arc winogrande mbpp; do
  for r in 0.95 0.90; do
    cascade calibrate --method thresholds configs/bench/routerbench.yaml "$WORK/rb_train.jsonl" --test "$WORK/rb_test.jsonl" \
      --task $t --target-quality $r --out "$WORK/rb_cal_${t}_$r.yaml" --json "$OUT/routerbench_${t}_calibrated_$r.json" || true
  done
done

# AlpacaEval: two three-rung ladders on the test split, with answer lengths.
cascade bench configs/bench/alpacaeval.yaml "$WORK/alpaca_test.jsonl" --json "$OUT/alpacaeval_test.json"
cascade bench configs/bench/alpacaeval-fusechat.yaml "$WORK/alpaca_test.jsonl" --json "$OUT/alpacaeval_fusechat_test.json"

# Replay speed and load test.
python benchmarks/replay_speed.py --queries 20000 | tee "$OUT/replay_speed.json"
python benchmarks/load_test.py --runs 1000 --json "$OUT/load_test.json" > /dev/null
python benchmarks/load_test.py --runs 1000 --max-concurrency 64 --json "$OUT/load_test_mc64.json" > /dev/null
# Savings over 20 split seeds and calibration speed (about 5 and 1.5 minutes; see RESULTS.md).
# savings_baseline_thresholds.json and calibrate_speed_baseline_thresholds.json record the
# threshold calibrator as the baseline of issue #9; write a new method's run to another file:
# python benchmarks/savings.py --seeds 20 --targets 0.90 0.95 --jobs 2 --label thresholds --out "$OUT/savings_baseline_thresholds.json"
# python benchmarks/calibrate_speed.py --queries 10000 --accept all --json "$OUT/calibrate_speed_baseline_thresholds.json"
# The gateway benchmark (with LiteLLM's proxy from its own venv) takes about 8 minutes on its own:
# python benchmarks/gateway_overhead.py --rates 50 200 500 --duration 20 --segment 5 --latency-ms 20 --litellm-python /tmp/gw/litellm-venv/bin/python --json "$OUT/gateway_overhead_litellm.json" > /dev/null
# Task routing (task auto): which benchmark a prompt came from, held-out accuracy.
python benchmarks/task_routing.py \
  --train "$WORK/rb_train.jsonl" gsm8k="$WORK/gsm_train.jsonl" alpacaeval="$WORK/alpaca_train.jsonl" \
  --test "$WORK/rb_test.jsonl" gsm8k="$WORK/gsm_test.jsonl" alpacaeval="$WORK/alpaca_test.jsonl" \
  --json "$OUT/task_routing.json" > /dev/null
echo "results in $OUT"
