# shellcheck shell=bash disable=SC2034
# Shared machinery for the sweep launchers (run_dnc_experiments.sh,
# run_lstm_experiments.sh). Sourced, never executed directly.
#
# A launcher defines its grid arrays, a `usage` function and a `build_grid`
# function that calls `zornn_add_run NAME ARG...` once per grid point, then
# calls `zornn_main "$@"`.
#
# Environment:
#   ZORNN_SCREEN_PREFIX  session/run name prefix (default: zornn)
#   ZORNN_NVIDIA_SMI     nvidia-smi executable to query (default: nvidia-smi)
#   ZORNN_PYTHON         python interpreter for the runs (default: python)
#   ZORNN_LAUNCH_DELAY   seconds to sleep between launches (default: 0)

ZORNN_PREFIX="${ZORNN_SCREEN_PREFIX:-zornn}"
ZORNN_PYTHON="${ZORNN_PYTHON:-python}"
ZORNN_NVIDIA_SMI="${ZORNN_NVIDIA_SMI:-nvidia-smi}"
ZORNN_LAUNCH_DELAY="${ZORNN_LAUNCH_DELAY:-0}"
ZORNN_HARNESS="rge_series_experiments.py"
ZORNN_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

DRY_RUN=0
GPUS_REQUESTED=""
GPU_IDS=()
RUN_NAMES=()
RUN_ARGS=()

zornn_die() {
    echo "error: $*" >&2
    exit 1
}

zornn_is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

# Parse the options shared by every launcher. Sets DRY_RUN, GPUS_REQUESTED and
# MAX_ITERS (when --max-iters is given).
zornn_parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -h|--help)
                usage
                exit 0
                ;;
            --dry-run)
                DRY_RUN=1
                shift
                ;;
            --gpus|--max-iters)
                if [[ $# -lt 2 ]] || ! zornn_is_uint "$2" || [[ "$2" -lt 1 ]]; then
                    echo "error: $1 needs a positive integer" >&2
                    usage >&2
                    exit 2
                fi
                if [[ "$1" == "--gpus" ]]; then GPUS_REQUESTED="$2"; else MAX_ITERS="$2"; fi
                shift 2
                ;;
            --gpus=*|--max-iters=*)
                local key="${1%%=*}" val="${1#*=}"
                shift
                set -- "$key" "$val" "$@"
                ;;
            *)
                echo "error: unknown option: $1" >&2
                usage >&2
                exit 2
                ;;
        esac
    done
}

# Fill GPU_IDS. In a real launch nvidia-smi must report at least one GPU; in a
# dry run the GPU count is simulated (--gpus N, else nvidia-smi if present,
# else a single GPU with index 0).
zornn_detect_gpus() {
    GPU_IDS=()
    if [[ "$DRY_RUN" -eq 1 && -n "$GPUS_REQUESTED" ]]; then
        local i
        for ((i = 0; i < GPUS_REQUESTED; i++)); do GPU_IDS+=("$i"); done
        return 0
    fi

    local out="" line
    if command -v "$ZORNN_NVIDIA_SMI" >/dev/null 2>&1; then
        out="$("$ZORNN_NVIDIA_SMI" --query-gpu=index --format=csv,noheader 2>/dev/null || true)"
    elif [[ "$DRY_RUN" -eq 0 ]]; then
        zornn_die "nvidia-smi not found ('$ZORNN_NVIDIA_SMI'); these sweeps need NVIDIA GPUs. Use --dry-run to only print the commands."
    fi
    while IFS= read -r line; do
        line="${line//[[:space:]]/}"
        if zornn_is_uint "$line"; then GPU_IDS+=("$line"); fi
    done <<< "$out"

    if [[ ${#GPU_IDS[@]} -eq 0 ]]; then
        if [[ "$DRY_RUN" -eq 1 ]]; then
            GPU_IDS=(0)
            return 0
        fi
        zornn_die "nvidia-smi reported no GPUs; these sweeps need at least one GPU. Use --dry-run to only print the commands."
    fi

    if [[ -n "$GPUS_REQUESTED" ]]; then
        if [[ "$GPUS_REQUESTED" -gt ${#GPU_IDS[@]} ]]; then
            zornn_die "--gpus $GPUS_REQUESTED requested but only ${#GPU_IDS[@]} GPU(s) found (${GPU_IDS[*]})"
        fi
        GPU_IDS=("${GPU_IDS[@]:0:$GPUS_REQUESTED}")
    fi
}

# Build a run name: prefix + parts joined by '_', restricted to [A-Za-z0-9_.-].
zornn_run_name() {
    local IFS=_
    local name="${ZORNN_PREFIX}_$*"
    printf '%s' "${name//[^A-Za-z0-9_.-]/_}"
}

# Register one run. Usage: zornn_add_run NAME HARNESS_ARG...
# --metrics_out logs/NAME.jsonl is appended here.
zornn_add_run() {
    local name="$1"
    shift
    local existing
    for existing in ${RUN_NAMES[@]+"${RUN_NAMES[@]}"}; do
        [[ "$existing" == "$name" ]] && zornn_die "duplicate run name in grid: $name (check the grid arrays for repeated values)"
    done
    local args
    args="$(printf ' %q' "$@" --metrics_out "logs/${name}.jsonl")"
    RUN_NAMES+=("$name")
    RUN_ARGS+=("${args# }")
}

# Call FN once per optimizer variant and learning rate of the grid:
#   FN ARG... VARIANT LR PROBES USE_BPTT USE_ADAM FD_RGE
# Variants come from NUM_PERTURBATIONS (CD-RGE), FD_NUM_PERTURBATIONS (FD-RGE)
# with ZO_LEARNING_RATES, and BPTT_OPTIMIZERS (sgd|adam) with
# BPTT_LEARNING_RATES.
zornn_each_optimizer_variant() {
    local fn="$1"
    shift
    local p lr opt use_adam
    for p in ${NUM_PERTURBATIONS[@]+"${NUM_PERTURBATIONS[@]}"}; do
        for lr in ${ZO_LEARNING_RATES[@]+"${ZO_LEARNING_RATES[@]}"}; do
            "$fn" "$@" "cdrge${p}" "$lr" "$p" false false false
        done
    done
    for p in ${FD_NUM_PERTURBATIONS[@]+"${FD_NUM_PERTURBATIONS[@]}"}; do
        for lr in ${ZO_LEARNING_RATES[@]+"${ZO_LEARNING_RATES[@]}"}; do
            "$fn" "$@" "fdrge${p}" "$lr" "$p" false false true
        done
    done
    for opt in ${BPTT_OPTIMIZERS[@]+"${BPTT_OPTIMIZERS[@]}"}; do
        case "$opt" in
            sgd) use_adam=false ;;
            adam) use_adam=true ;;
            *) zornn_die "BPTT_OPTIMIZERS entries must be sgd or adam, got: $opt" ;;
        esac
        for lr in ${BPTT_LEARNING_RATES[@]+"${BPTT_LEARNING_RATES[@]}"}; do
            "$fn" "$@" "bptt_${opt}" "$lr" "$BPTT_NUM_PERTURBATIONS" true "$use_adam" false
        done
    done
}

# The command string executed inside the screen session for run $1 on GPU $2.
zornn_inner_command() {
    local idx="$1" gpu="$2"
    local name="${RUN_NAMES[$idx]}"
    local log="logs/${name}.log"
    # shellcheck disable=SC2016  # PIPESTATUS expands inside the session
    printf 'cd %q && CUDA_VISIBLE_DEVICES=%s PYTHONUNBUFFERED=1 %q %s %s 2>&1 | tee %q; echo "[%s] exit status ${PIPESTATUS[0]}" >> %q' \
        "$ZORNN_REPO_ROOT" "$gpu" "$ZORNN_PYTHON" "$ZORNN_HARNESS" "${RUN_ARGS[$idx]}" "$log" "$name" "$log"
}

# Quote a string for display inside single quotes.
zornn_squote() {
    local s="$1"
    printf "'%s'" "${s//\'/\'\\\'\'}"
}

zornn_session_exists() {
    local listing
    listing="$(screen -ls 2>/dev/null || true)"
    awk -v want="$1" '
        /^[[:space:]]+[0-9]+\./ { s = $1; sub(/^[0-9]+\./, "", s); if (s == want) found = 1 }
        END { exit !found }' <<< "$listing"
}

zornn_main() {
    zornn_parse_args "$@"
    build_grid
    local n=${#RUN_NAMES[@]}
    [[ "$n" -gt 0 ]] || zornn_die "the grid is empty; edit the arrays at the top of the script"

    zornn_detect_gpus
    if [[ "$DRY_RUN" -eq 0 ]] && ! command -v screen >/dev/null 2>&1; then
        zornn_die "GNU screen is not installed. Install it with: sudo apt-get update && sudo apt-get install -y screen (or run with --dry-run to only print the commands)"
    fi

    local ngpu=${#GPU_IDS[@]}
    echo "[${ZORNN_PREFIX}] ${n} run(s) over ${ngpu} GPU(s) (${GPU_IDS[*]}); logs in ${ZORNN_REPO_ROOT}/logs" >&2
    [[ "$DRY_RUN" -eq 1 ]] || mkdir -p "${ZORNN_REPO_ROOT}/logs"

    local i gpu name inner launched=0 skipped=0
    for ((i = 0; i < n; i++)); do
        gpu="${GPU_IDS[$((i % ngpu))]}"
        name="${RUN_NAMES[$i]}"
        inner="$(zornn_inner_command "$i" "$gpu")"
        if [[ "$DRY_RUN" -eq 1 ]]; then
            printf '[dry-run] screen -dmS %s bash -c %s\n' "$name" "$(zornn_squote "$inner")"
            continue
        fi
        if zornn_session_exists "$name"; then
            echo "[${ZORNN_PREFIX}] skip ${name}: a screen session with this name is already running" >&2
            skipped=$((skipped + 1))
            continue
        fi
        screen -dmS "$name" bash -c "$inner"
        echo "[${ZORNN_PREFIX}] started ${name} on GPU ${gpu}"
        launched=$((launched + 1))
        if [[ "$ZORNN_LAUNCH_DELAY" != "0" ]]; then sleep "$ZORNN_LAUNCH_DELAY"; fi
    done
    if [[ "$DRY_RUN" -eq 0 ]]; then
        echo "[${ZORNN_PREFIX}] launched ${launched} run(s), skipped ${skipped}. Watch with scripts/capture_screen_logs.sh, stop with scripts/kill_screens.sh"
    fi
}
