#!/usr/bin/env bash
# DNC sweep (the paper's Figure 1 setting): overfit one copy batch with a
# 1024-wide DNC and compare CD-RGE (512 and 96 probes), FD-RGE (96 probes),
# BPTT-SGD and BPTT-Adam over a learning-rate grid. Each grid point runs in
# its own detached screen session, round-robin over the visible GPUs.
set -euo pipefail
# shellcheck disable=SC2034  # grid arrays are read by _sweep_common.sh

# ---------------------------------------------------------------- grid ----
TASKS=(copy)
ARCHS=(DNC)
MODEL_SCALES=(8)              # hidden = memory = head size = 128 * scale
NUM_HEADS=1
INPUT_SIZE=32
SEQ_LENGTH=100                # context length
MICRO_BATCH_SIZE=1
OVERFIT_TO_ONE_BATCH=true
SEEDS=(0)

NUM_PERTURBATIONS=(512 96)    # CD-RGE variants, one per probe count
FD_NUM_PERTURBATIONS=(96)     # FD-RGE variants; () disables FD-RGE
BPTT_OPTIMIZERS=(sgd adam)    # BPTT baselines; () disables BPTT
BPTT_NUM_PERTURBATIONS=1      # passed to BPTT runs, where probes are unused

ZO_LEARNING_RATES=(0.1 0.01 0.001 0.0001)        # also the probe epsilon
BPTT_LEARNING_RATES=(0.01 0.001 0.0001 0.00001)

MAX_ITERS="${MAX_ITERS:-100000}"
LOG_INTERVAL="${LOG_INTERVAL:-10}"
# ---------------------------------------------------------------------------

# shellcheck source=scripts/_sweep_common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_sweep_common.sh"

usage() {
    cat <<EOF
Usage: $(basename "$0") [--dry-run] [--gpus N] [--max-iters N] [--help]

Launch the DNC zeroth-order vs BPTT sweep, one detached screen session per
run (session and run names start with '${ZORNN_PREFIX}_'). Each run logs to
logs/<run>.log and writes metrics to logs/<run>.jsonl under the repo root.
The grid is the set of arrays at the top of this script.

Options:
  --dry-run         print every screen command and launch nothing
                    (needs neither screen nor a GPU)
  --gpus N          use the first N GPUs (with --dry-run: simulate N GPUs)
  --max-iters N     --max_iterations for every run (default ${MAX_ITERS})
  -h, --help        show this help

Environment: ZORNN_SCREEN_PREFIX (default zornn), ZORNN_PYTHON (default
python), ZORNN_NVIDIA_SMI (default nvidia-smi), ZORNN_LAUNCH_DELAY (seconds
between launches, default 0), MAX_ITERS, LOG_INTERVAL.
EOF
}

# add_dnc_run TASK ARCH SCALE SEED VARIANT LR PROBES USE_BPTT USE_ADAM FD_RGE
add_dnc_run() {
    local task="$1" arch="$2" scale="$3" seed="$4" variant="$5" lr="$6"
    local probes="$7" use_bptt="$8" use_adam="$9" fd_rge="${10}"
    local width=$((128 * scale))
    local name
    name="$(zornn_run_name "$task" "$arch" "scale${scale}" "$variant" "lr${lr}" "seed${seed}")"
    local args=(
        --device cuda
        --task "$task"
        --model_type "$arch"
        --seq_length "$SEQ_LENGTH"
        --micro_batch_size "$MICRO_BATCH_SIZE"
        --macro_batch_size "$MICRO_BATCH_SIZE"
        --max_iterations "$MAX_ITERS"
        --input_size "$INPUT_SIZE"
        --hidden_size "$width"
        --num_heads "$NUM_HEADS"
        --memory_size "$width"
        --head_size "$width"
        --learning_rate_and_epsilon "$lr"
        --num_perturbations "$probes"
        --use_bptt "$use_bptt"
        --use_adam "$use_adam"
        --overfit_to_one_batch_flag "$OVERFIT_TO_ONE_BATCH"
        --log_interval "$LOG_INTERVAL"
        --seed "$seed"
        --wandb false
    )
    if [[ "$fd_rge" == true ]]; then args+=(--fd_rge true); fi
    zornn_add_run "$name" "${args[@]}"
}

build_grid() {
    local task arch scale seed
    for task in "${TASKS[@]}"; do
        for arch in "${ARCHS[@]}"; do
            for scale in "${MODEL_SCALES[@]}"; do
                for seed in "${SEEDS[@]}"; do
                    zornn_each_optimizer_variant add_dnc_run "$task" "$arch" "$scale" "$seed"
                done
            done
        done
    done
}

# Sourcing the script only defines the grid and functions.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi
zornn_main "$@"
