#!/usr/bin/env bash
# Figure 1 of the paper in one command: overfit one batch of the copy task with
# a DNC and compare CD-RGE (many and few probes), FD-RGE, BPTT-SGD and
# BPTT-Adam, each over a learning-rate grid; then regenerate the report.
#
#   scripts/reproduce_figure1.sh --scale cpu      # tiny DNC on CPU, a few minutes
#   scripts/reproduce_figure1.sh --scale paper    # the paper's DNC, one GPU, sequential
#
# The grids are the variables in define_grid below; edit them there.
set -euo pipefail

REPRO_EXPERIMENT=figure1
REPRO_TITLE="Figure 1 (DNC copy overfit)"

# shellcheck source=scripts/_reproduce_common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_reproduce_common.sh"

define_grid() {
    case "$1" in
        paper)
            # The paper: DNC at scale 8 (hidden = memory slots = word size = 1024,
            # 1 read head; 6,553,893 parameters in the paper's code, 12.8M in ours),
            # input 32, context 100, batch 1. Its suggested lrs: CD-RGE@512 0.01, SGD 0.0001.
            DEVICE=cuda
            THREADS=0                 # harness default
            HIDDEN=1024 MEMORY=1024 WORD=1024 HEADS=1 INPUT=32
            SEQ_LENGTH=100 BATCH=1
            MAX_NUM=15                # numbers 0..14, as in the paper's log (max_num=15)
            SEED=0
            CD_PROBES=(512 96)        # CD-RGE (plain: SGD along the estimate, as in the paper)
            FD_PROBES=(96)            # FD-RGE
            CD_ADAM_PROBES=()         # CD-RGE + Adam on the estimate (not in the paper's figure)
            ZO_LRS=(0.1 0.01 0.001 0.0001)              # lr = probe epsilon
            ZO_ADAM_LRS=(0.01 0.001)
            BPTT_SGD_LRS=(0.01 0.001 0.0001 0.00001)    # ~10-100x below the ZO grid
            BPTT_ADAM_LRS=(0.01 0.001 0.0001 0.00001)
            MAX_ITERS=200             # the paper's code took ~80 s/step at 512 probes (A40); measure first
            LOG_INTERVAL=10
            STOP_LOSS=0.05            # a run ends once its loss is below this
            ;;
        cpu)
            # Tiny DNC (4,177 parameters), short copies, probe counts scaled down
            # (32 and 8 stand for 512 and 96) so that the grid runs in minutes on 2 cores.
            DEVICE=cpu
            THREADS=1
            HIDDEN=16 MEMORY=8 WORD=8 HEADS=1 INPUT=8
            SEQ_LENGTH=8 BATCH=4
            MAX_NUM=15
            SEED=0
            CD_PROBES=(32 8)
            FD_PROBES=(8)
            CD_ADAM_PROBES=(8)
            ZO_LRS=(0.3 0.1)
            ZO_ADAM_LRS=(0.03 0.01)
            BPTT_SGD_LRS=(1.0 0.1)
            BPTT_ADAM_LRS=(0.01 0.001)
            MAX_ITERS=200
            LOG_INTERVAL=5
            STOP_LOSS=0.05
            ;;
    esac
}

usage() {
    cat <<EOF
Usage: $(basename "$0") [--scale cpu|paper] [--dry-run] [--out DIR] [options]

$REPRO_TITLE: every optimizer of the grid at every learning rate, one run at a
time, then scripts/report.py rewrites the Figure 1 section of the report.

  --scale cpu|paper  cpu (default): tiny DNC, minutes on a CPU;
                     paper: the paper's 1024-wide DNC on one GPU (--device cuda)
  --dry-run          print the commands and run nothing
  --out DIR          JSON lines go to DIR (default results/figure1/<scale>)
  --logs DIR         per-run stdout logs (default logs/figure1/<scale>)
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
scripts/run_dnc_experiments.sh (screen sessions; its metrics land in logs/),
then: python scripts/report.py --figure1 logs/ --tag paper
EOF
}

# add_fig1_run VARIANT LR HARNESS_ARG...
add_fig1_run() {
    local variant="$1" lr="$2"
    shift 2
    local name="fig1_${SCALE}_${variant}_lr${lr}"
    local args=(
        --device "$DEVICE"
        --task copy
        --model_type DNC
        --seq_length "$SEQ_LENGTH"
        --max_num "$MAX_NUM"
        --micro_batch_size "$BATCH"
        --macro_batch_size "$BATCH"
        --input_size "$INPUT"
        --hidden_size "$HIDDEN"
        --memory_size "$MEMORY"
        --head_size "$WORD"
        --num_heads "$HEADS"
        --overfit_to_one_batch_flag true
        --max_iterations "$MAX_ITERS"
        --log_interval "$LOG_INTERVAL"
        --stop_loss "$STOP_LOSS"
        --learning_rate_and_epsilon "$lr"
        --seed "$SEED"
        --verbose false
    )
    if [[ "$THREADS" != 0 ]]; then args+=(--threads "$THREADS"); fi
    repro_add_run "$name" "${args[@]}" "$@"
}

build_grid() {
    [[ -z "$SIZES_OVERRIDE" ]] || repro_usage_error "--sizes applies to reproduce_table2.sh only"
    local p lr
    for p in ${CD_PROBES[@]+"${CD_PROBES[@]}"}; do
        for lr in "${ZO_LRS[@]}"; do add_fig1_run "cdrge${p}" "$lr" --num_perturbations "$p"; done
    done
    for p in ${FD_PROBES[@]+"${FD_PROBES[@]}"}; do
        for lr in "${ZO_LRS[@]}"; do add_fig1_run "fdrge${p}" "$lr" --num_perturbations "$p" --fd_rge true; done
    done
    for p in ${CD_ADAM_PROBES[@]+"${CD_ADAM_PROBES[@]}"}; do
        for lr in "${ZO_ADAM_LRS[@]}"; do add_fig1_run "cdrge${p}adam" "$lr" --num_perturbations "$p" --use_adam true; done
    done
    for lr in ${BPTT_SGD_LRS[@]+"${BPTT_SGD_LRS[@]}"}; do
        add_fig1_run bptt_sgd "$lr" --use_bptt true --use_adam false
    done
    for lr in ${BPTT_ADAM_LRS[@]+"${BPTT_ADAM_LRS[@]}"}; do
        add_fig1_run bptt_adam "$lr" --use_bptt true --use_adam true
    done
}

# Sourcing the script only defines the grid and functions. The run is one line
# ending in exit, so editing this file while it runs cannot change what it does.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then return 0; fi
repro_main "$(basename "$0")" "$@"; exit $?
