#!/usr/bin/env bash
# Distributed CD-RGE on 2 GPUs (NCCL): the test-mode run (tiny, paper settings), replica checks every
# 5 steps, bytes per step, and 1- vs 2-GPU throughput at `large` with 12 probes per GPU.
#   OUT=bench/results bash bench/run_dist_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
COMMON="--task copy --batch_size 1024 --meta_perturbations 12 --model_type LSTM --min_seq_len 10 --verbose false --sync_check_iters 5"
echo "== test mode (overfit one batch), small default model, 2 GPUs"
torchrun --nproc_per_node=2 distributed_rge.py --task copy --mode test --batch_size 4 --meta_perturbations 16 \
    --learning_rate 0.1 --adam true --max_iters 200 --sync_check_iters 5 --verbose false \
    --metrics_out "$OUT/dist_tiny_w2.jsonl" --checkpoint_dir /tmp/ck_tiny 2>&1 | tail -n 4
for W in 1 2; do
  echo "== large, 12 probes per GPU, $W GPU(s)"
  torchrun --nproc_per_node=$W distributed_rge.py $COMMON --hidden_size 66000 --input_size 100 --num_heads 220 \
      --learning_rate 0.01 --mode train --max_iters 8 --val_iters 1000 --metrics_out "$OUT/dist_large_w$W.jsonl" \
      --checkpoint_dir /tmp/ck_large_$W 2>&1 | grep -v "^\s*$" | tail -n 6
done
python3 - "$OUT" <<'PY'
import json, statistics, sys, os
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
rows = []
for name in ("dist_tiny_w2.jsonl", "dist_large_w1.jsonl", "dist_large_w2.jsonl"):
    recs = load(name)
    if not recs:
        rows.append((name, "missing")); continue
    times = [r["step_time_s"] for r in recs if r.get("step", 0) >= 2 and r.get("step_time_s")]
    med = statistics.median(times) if times else float("nan")
    rows.append((name, f"steps {len(recs)}, median s/step {med:.4f}, last loss {recs[-1].get('train_loss')}, "
                       f"bytes/step {recs[-1].get('bytes_communicated')}, peak GiB {recs[-1].get('peak_mem_bytes', 0) / 2**30:.2f}"))
for n, s in rows: print(f"{n}: {s}")
w1, w2 = load("dist_large_w1.jsonl"), load("dist_large_w2.jsonl")
if w1 and w2:
    t1 = statistics.median([r["step_time_s"] for r in w1 if r["step"] >= 2])
    t2 = statistics.median([r["step_time_s"] for r in w2 if r["step"] >= 2])
    print(f"2-GPU throughput (probes/s) over 1-GPU: {2 * t1 / t2:.3f}x (target >= 1.9x)")
PY
