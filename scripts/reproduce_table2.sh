#!/usr/bin/env bash
# Table 2 of the paper in one command: LSTMs trained on copy / sort / reverse /
# add with lengths <= seq_length, validated on longer sequences (the harness's
# validation split: lengths seq_length+1 .. seq_length+50), BPTT against
# CD-RGE at 96 and 512 probes, each over a learning-rate grid; then regenerate
# the report (accuracy at equal steps and at equal wall clock).
#
#   scripts/reproduce_table2.sh --scale cpu      # tiny LSTM, copy + reverse, a few minutes on CPU
#   scripts/reproduce_table2.sh --scale paper    # tiny + small LSTM, 4 tasks, one GPU, sequential
#
# The grids are the variables in define_grid below; edit them there.
set -euo pipefail

REPRO_EXPERIMENT=table2
REPRO_TITLE="Table 2 (LSTM length generalisation)"

# shellcheck source=scripts/_reproduce_common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_reproduce_common.sh"

# Size presets (the paper's: hidden / heads; input 100). Batch sizes follow the
# paper's launch scripts (2048 for tiny and small, 1024 for medium). mini is the
# CPU-scale model.
declare -A SIZE_HIDDEN=([tiny]=240 [small]=1600 [medium]=9600 [mini]=32)
declare -A SIZE_HEADS=([tiny]=12 [small]=32 [medium]=64 [mini]=2)
declare -A SIZE_INPUT=([tiny]=100 [small]=100 [medium]=100 [mini]=16)
declare -A SIZE_BATCH=([tiny]=2048 [small]=2048 [medium]=1024 [mini]=16)

define_grid() {
    case "$1" in
        paper)
            DEVICE=cuda
            THREADS=0                 # harness default
            TASKS=(copy sort reverse add)
            SIZES=(tiny small)        # add medium with --sizes tiny,small,medium
            SEQ_LENGTH=20             # train lengths 2..20, validation 21..70
            SEED=0
            CD_PROBES=(96 512)        # CD-RGE (plain, as in the paper)
            FD_PROBES=()
            CD_ADAM_PROBES=()         # CD-RGE + Adam on the estimate (not in the paper's table)
            ZO_LRS=(0.1 0.01 0.001 0.0001)              # lr = probe epsilon
            ZO_ADAM_LRS=(0.01 0.001)
            BPTT_SGD_LRS=(0.01 0.001 0.0001 0.00001)    # ~10-100x below the ZO grid
            BPTT_ADAM_LRS=(0.01 0.001 0.0001 0.00001)
            MAX_ITERS=2000
            LOG_INTERVAL=100          # validation at every log line
            ;;
        cpu)
            # A 5k-parameter LSTM (hidden 32, 2 heads, input 16), train lengths 2..8,
            # validation lengths 9..58; CD-RGE at 32 probes against BPTT.
            DEVICE=cpu
            THREADS=1
            TASKS=(copy reverse)
            SIZES=(mini)
            SEQ_LENGTH=8
            SEED=0
            CD_PROBES=(32)
            FD_PROBES=()
            CD_ADAM_PROBES=(32)
            ZO_LRS=(0.3 0.1)
            ZO_ADAM_LRS=(0.01)
            BPTT_SGD_LRS=(1.0)
            BPTT_ADAM_LRS=(0.01 0.003)
            MAX_ITERS=300
            LOG_INTERVAL=25
            ;;
    esac
    if [[ -n "$SIZES_OVERRIDE" ]]; then
        IFS=, read -r -a SIZES <<< "$SIZES_OVERRIDE"
    fi
    local s
    for s in "${SIZES[@]}"; do
        [[ -n "${SIZE_HIDDEN[$s]:-}" ]] || repro_usage_error "unknown size '$s' (known: ${!SIZE_HIDDEN[*]})"
    done
}

usage() {
    cat <<EOF
Usage: $(basename "$0") [--scale cpu|paper] [--dry-run] [--out DIR] [options]

$REPRO_TITLE: every task x size x optimizer x learning rate, one run at a
time, then scripts/report.py rewrites the Table 2 section of the report.

  --scale cpu|paper  cpu (default): 5k-parameter LSTM, copy + reverse, minutes on a CPU;
                     paper: tiny and small LSTMs, copy/sort/reverse/add, one GPU
  --sizes LIST       comma list of sizes (paper default tiny,small; also medium)
  --dry-run          print the commands and run nothing
  --out DIR          JSON lines go to DIR (default results/table2/<scale>)
  --logs DIR         per-run stdout logs (default logs/table2/<scale>)
  --jobs N           run N at once (default 1; on a GPU prefer the screen sweep)
  --max-iters N      override the grid's --max_iterations
  --only SUBSTR      only runs whose name contains SUBSTR (repeatable)
  --device DEV       override the device (cpu, cuda, cuda:1)
  --force            rerun runs that finished earlier (default: skip them)
  --report FILE      report to update (default results/REPORT.md)
  --no-report        do not run scripts/report.py
  -h, --help         this help

A run is done when DIR/<run>.summary.json exists; rerunning the command
resumes with the runs not done yet. For all GPUs of a node in parallel use
scripts/run_lstm_experiments.sh (screen sessions; its metrics land in logs/),
then: python scripts/report.py --table2 logs/ --tag paper
EOF
}

# add_t2_run TASK SIZE VARIANT LR HARNESS_ARG...
add_t2_run() {
    local task="$1" size="$2" variant="$3" lr="$4"
    shift 4
    local hidden="${SIZE_HIDDEN[$size]}" heads="${SIZE_HEADS[$size]}" batch="${SIZE_BATCH[$size]}"
    local name="t2_${SCALE}_${task}_${size}_${variant}_lr${lr}"
    local args=(
        --device "$DEVICE"
        --task "$task"
        --model_type LSTM
        --seq_length "$SEQ_LENGTH"
        --micro_batch_size "$batch"
        --macro_batch_size "$batch"
        --input_size "${SIZE_INPUT[$size]}"
        --hidden_size "$hidden"
        --num_heads "$heads"
        --head_size "$((hidden / heads))"
        --overfit_to_one_batch_flag false
        --max_iterations "$MAX_ITERS"
        --log_interval "$LOG_INTERVAL"
        --val_interval "$LOG_INTERVAL"
        --learning_rate_and_epsilon "$lr"
        --seed "$SEED"
        --verbose false
    )
    if [[ "$THREADS" != 0 ]]; then args+=(--threads "$THREADS"); fi
    repro_add_run "$name" "${args[@]}" "$@"
}

build_grid() {
    local task size p lr
    for task in "${TASKS[@]}"; do
        for size in "${SIZES[@]}"; do
            for p in ${CD_PROBES[@]+"${CD_PROBES[@]}"}; do
                for lr in "${ZO_LRS[@]}"; do
                    add_t2_run "$task" "$size" "cdrge${p}" "$lr" --num_perturbations "$p"
                done
            done
            for p in ${FD_PROBES[@]+"${FD_PROBES[@]}"}; do
                for lr in "${ZO_LRS[@]}"; do
                    add_t2_run "$task" "$size" "fdrge${p}" "$lr" --num_perturbations "$p" --fd_rge true
                done
            done
            for p in ${CD_ADAM_PROBES[@]+"${CD_ADAM_PROBES[@]}"}; do
                for lr in "${ZO_ADAM_LRS[@]}"; do
                    add_t2_run "$task" "$size" "cdrge${p}adam" "$lr" --num_perturbations "$p" --use_adam true
                done
            done
            for lr in ${BPTT_SGD_LRS[@]+"${BPTT_SGD_LRS[@]}"}; do
                add_t2_run "$task" "$size" bptt_sgd "$lr" --use_bptt true --use_adam false
            done
            for lr in ${BPTT_ADAM_LRS[@]+"${BPTT_ADAM_LRS[@]}"}; do
                add_t2_run "$task" "$size" bptt_adam "$lr" --use_bptt true --use_adam true
            done
        done
    done
}

# Sourcing the script only defines the grid and functions. The run is one line
# ending in exit, so editing this file while it runs cannot change what it does.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi
repro_main "$(basename "$0")" "$@"; exit $?
