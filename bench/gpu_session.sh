#!/usr/bin/env bash
# One device call that uses every GPU of the machine: GPU 0 runs the kernel sweep, the correctness
# checks and the step bench (in that order, with the sweep's best configs); GPUs 1.. run the
# paper-scale reproduction lanes (scripts/gpu_batch_reproduce.sh) or, with --smoke, the 7B smoke test
# (bench/run_smoke_7b.sh on GPUs 1..); optionally the scaling bench runs after both, on all GPUs.
#
#   bash bench/gpu_session.sh [--bench-budget S] [--sweep-budget S] [--sweep-sizes L] [--repro-budget S]
#                             [--bench-args "..."] [--scaling [--scaling-args "..."]] [--no-repro] [--flashrnn]
#                             [--graphs-sizes L [--graphs-budget S]] [--smoke [--smoke-budget S]]
#                             [--no-sweep] [--sweep-args "..."] [--no-checks] [--update-bench]
#                             [--profile-sizes L]
#
# --graphs-sizes: after the eager bench, GPU 0 benches those presets again with --cuda_graphs.
# --profile-sizes: then GPU 0 profiles whole ZO steps of those presets (bench/profile_step.py).
#
# Logs and results go under $OUT (the device tool's output folder; default bench/results/session).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/session}
BENCH_BUDGET=220 REPRO_BUDGET=380 SWEEP_BUDGET=150 SCALING=0 REPRO=1 FLASHRNN=0 SWEEP_SIZES=large,xlarge,medium,small,tiny
GRAPHS_SIZES="" PROFILE_SIZES="" GRAPHS_BUDGET=90 SMOKE=0 SMOKE_BUDGET=520 SWEEP=1 CHECKS=1 UPDATE_BENCH=0 SWEEP_ARGS=""
SCALING_ARGS="--sizes large,xlarge --worlds 1,4,2 --warmup 3,xlarge=1 --iters 5,xlarge=3 --budget-s 140"
BENCH_ARGS="--probes 12,64 --sizes tiny,small,medium,large,xlarge --sections peak,zo,breakdown,sweep --sweep_T 10,100,1000,10000"
while [ $# -gt 0 ]; do
    case "$1" in
        --bench-budget) BENCH_BUDGET=$2; shift 2 ;;
        --sweep-budget) SWEEP_BUDGET=$2; shift 2 ;;
        --repro-budget) REPRO_BUDGET=$2; shift 2 ;;
        --bench-args) BENCH_ARGS=$2; shift 2 ;;
        --sweep-sizes) SWEEP_SIZES=$2; shift 2 ;;
        --scaling-args) SCALING_ARGS=$2; shift 2 ;;
        --scaling) SCALING=1; shift ;;
        --no-repro) REPRO=0; shift ;;
        --flashrnn) FLASHRNN=1; shift ;;
        --graphs-sizes) GRAPHS_SIZES=$2; shift 2 ;;
        --graphs-budget) GRAPHS_BUDGET=$2; shift 2 ;;
        --profile-sizes) PROFILE_SIZES=$2; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --smoke-budget) SMOKE_BUDGET=$2; shift 2 ;;
        --no-sweep) SWEEP=0; shift ;;
        --no-checks) CHECKS=0; shift ;;
        --update-bench) UPDATE_BENCH=1; shift ;;
        --sweep-args) SWEEP_ARGS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
NG=$(python3 -c 'import torch; print(torch.cuda.device_count())')
echo "[session] $(date -u +%FT%TZ) $NG GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

lane0() {
    export CUDA_VISIBLE_DEVICES=0
    if [ "$SWEEP" = 1 ]; then
        # shellcheck disable=SC2086
        python3 bench/step_kernel_sweep.py --sizes "$SWEEP_SIZES" --time_budget_s "$SWEEP_BUDGET" $SWEEP_ARGS \
            --out "$OUT" > "$OUT/sweep.log" 2>&1
        echo "[lane0] sweep rc=$?"
        [ -s "$OUT/step_tuning.json" ] && export ZO_STEP_TUNING="$OUT/step_tuning.json"
    fi
    if [ "$CHECKS" = 1 ]; then
        python3 bench/gpu_checks.py --out "$OUT/gpu_checks.md" > "$OUT/gpu_checks.log" 2>&1
        echo "[lane0] gpu_checks rc=$?"
    fi
    if [ "$UPDATE_BENCH" = 1 ]; then
        python3 bench/bench_update.py --sizes 1e8,1e9 --seeds 12,96 --models 2,24 --mulhi-sweep 0 \
            --out "$OUT/update_kernel.md" > "$OUT/update.log" 2>&1
        echo "[lane0] bench_update rc=$?"
    fi
    # shellcheck disable=SC2086
    python3 bench/bench_step.py $BENCH_ARGS --time_budget_s "$BENCH_BUDGET" --out "$OUT" > "$OUT/bench.log" 2>&1
    echo "[lane0] bench rc=$?"
    if [ -n "$GRAPHS_SIZES" ]; then
        python3 bench/bench_step.py --cuda_graphs --sizes "$GRAPHS_SIZES" --probes 12,64 --sections zo,breakdown \
            --time_budget_s "$GRAPHS_BUDGET" --out "$OUT" > "$OUT/bench_graphs.log" 2>&1
        echo "[lane0] bench --cuda_graphs rc=$?"
    fi
    if [ -n "$PROFILE_SIZES" ]; then
        python3 bench/profile_step.py --sizes "$PROFILE_SIZES" --probes 12 --out "$OUT" > "$OUT/profile_step.log" 2>&1
        echo "[lane0] profile_step rc=$?"
    fi
    if [ "$FLASHRNN" = 1 ]; then
        python3 bench/flashrnn_checks.py --out "$OUT/flashrnn_checks.md" > "$OUT/flashrnn.log" 2>&1
        echo "[lane0] flashrnn rc=$?"
    fi
}

lane0 & P0=$!
if [ "$SMOKE" = 1 ] && [ "$NG" -ge 2 ]; then
    CUDA_VISIBLE_DEVICES=$(seq -s, 1 $((NG - 1))) bash bench/run_smoke_7b.sh --gpus $((NG - 1)) \
        --budget-s "$SMOKE_BUDGET" --out "$OUT" > "$OUT/smoke7b_session.log" 2>&1
    echo "[smoke] rc=$?"
elif [ "$REPRO" = 1 ] && [ "$NG" -ge 2 ]; then
    GPUS=$(seq -s, 1 $((NG - 1)))
    scripts/gpu_batch_reproduce.sh --gpus "$GPUS" --budget_s "$REPRO_BUDGET" > "$OUT/repro.log" 2>&1
    echo "[repro] rc=$?"
    cp -r results/gpu_runs "$OUT/" 2>/dev/null
fi
wait $P0
if [ "$SCALING" = 1 ]; then
    # shellcheck disable=SC2086
    bash bench/run_scaling.sh --gpus "$NG" $SCALING_ARGS --out "$OUT" > "$OUT/scaling.log" 2>&1
    echo "[scaling] rc=$?"
fi
tail -5 "$OUT"/sweep.log "$OUT"/gpu_checks.log "$OUT"/bench.log "$OUT"/bench_graphs.log "$OUT"/smoke7b_session.log 2>/dev/null
grep -h "best\|cuBLAS" "$OUT"/sweep.log 2>/dev/null
# the device tool returns at most 8 files: everything goes into one archive, the key reports beside it
(cd "$OUT" && tar czf ../session_all.tgz . && mkdir -p keep && mv ../session_all.tgz keep/ \
    && find . -maxdepth 1 -type f ! -name 'bench_step_*.md' ! -name 'scaling_*.md' ! -name 'smoke7b_*.md' ! -name 'profile_step_*.md' -delete \
    && find . -mindepth 1 -maxdepth 1 -type d ! -name keep -exec rm -rf {} + && mv keep/session_all.tgz . && rmdir keep)
ls -la "$OUT"
echo "[session] done $(date -u +%FT%TZ)"
