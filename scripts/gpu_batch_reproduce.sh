#!/usr/bin/env bash
# Paper-scale Figure 1 and Table 2 in a fixed wall-clock budget, in parallel over
# the given GPUs: one lane per GPU, each lane running its runs one after another
# as plain background processes (no screen), every run under its own wall-clock
# cap. Meant for a short GPU session:
#
#   scripts/gpu_batch_reproduce.sh --gpus 1,2,3 --budget_s 380 --dry-run   # the plan, launches nothing
#   scripts/gpu_batch_reproduce.sh --gpus 1,2,3 --budget_s 380             # run it
#   python scripts/report.py --gpu results/gpu_runs                        # "Paper scale on H200" in results/REPORT.md
#
# The runs are the paper-scale grids of scripts/reproduce_figure1.sh and
# scripts/reproduce_table2.sh (those scripts are sourced and their build_grid
# builds every command line; nothing here repeats their flags), in priority
# order:
#   tier 0: Figure 1 at the paper's suggested learning rates (CD-RGE@512, CD-RGE@96,
#           FD-RGE@96 at 0.01, BPTT-SGD at 1e-4, BPTT-Adam at 1e-3), then Table 2
#           (tiny, then small; copy, sort, reverse, add) with CD-RGE@96, CD-RGE@512
#           at 0.01 and BPTT-Adam at 1e-3;
#   tier k: the grid's learning rate k places away from the suggested one (in the
#           grid's order, the larger first on ties); Table 2's BPTT-SGD (1e-4
#           first) is one tier behind the other Table 2 optimizers.
# Within a tier Figure 1 comes first, then Table 2 by size, task and optimizer.
#
# Scheduling: a lane, when free, takes the first run of the priority list that
# no lane has taken and that fits in what is left of its budget (the run's cap,
# or at least MIN_CAP_PCT of it, the cap then shortened to what is left). The
# dry run prints the plan this gives if every run uses its whole cap (the usual
# case: the caps, not max_iterations, end most runs); at run time a run that
# ends early (stop loss, max_iterations) frees its lane for the next run sooner.
# Budgets count from the start of the command; the last run of a lane can end
# up to KILL_GRACE_S (plus one step) after it.
#
# Each run: `timeout -s INT -k KILL_GRACE_S CAP python rge_series_experiments.py ...`
# with CUDA_VISIBLE_DEVICES set to the lane's GPU (so --device cuda is that GPU).
# The harness has no wall-clock flag; on SIGINT it stops (KeyboardInterrupt),
# and its --metrics_out JSON lines, flushed line by line, are kept: a run cut
# by its cap is a usable curve up to the cap.
#
# Under OUT (default results/gpu_runs):
#   figure1/NAME.jsonl, table2/NAME.jsonl   the harness's JSON lines
#   */NAME.summary.json    the run finished (max_iterations or stop loss)
#   */NAME.cut             the run was stopped by its cap (JSON: cap, exit status, lines)
#   */NAME.failed          the harness failed (exit status and log tail)
#   */run_info.json        date, machine, command, wall time (read by report.py)
#   logs/NAME.log          each run's stdout/stderr
#   batch_runs.jsonl       one line per executed run: lane, GPU, cap, wall, outcome
#   priority.tsv           the whole priority list of the last invocation
# Rerunning the same command resumes: runs that finished or were cut earlier are
# skipped (--force reruns them), failed runs are retried, and the budget goes to
# the next runs of the list.
#
# Environment: ZORNN_PYTHON (python interpreter; default python, else python3).
# shellcheck disable=SC2317,SC2329  # code after sourcing the reproduce scripts is reachable; add_t2_run is called by build_grid
set -euo pipefail

GB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GB_SCRIPTS="$GB_ROOT/scripts"

# ------------------------------------------------------------- tunables --
# Per-run wall-clock caps in seconds (the harness's start-up, ~5-15 s on a GPU,
# counts against them). --cap_pct scales them all.
declare -A FIG1_CAP_S=([cdrge512]=90 [cdrge96]=75 [fdrge96]=60 [bptt_sgd]=60 [bptt_adam]=60)
FIG1_DEFAULT_CAP_S=60
T2_CAP_S=30
# Figure 1 overfits one fixed batch: no validation, so every step is logged.
# max_iterations is raised from the grid's 200 so that the caps (and the grid's
# stop loss) end the runs, not the step count.
FIG1_MAX_ITERS=1000
FIG1_LOG_INTERVAL=1
# Table 2 validates at every log line; intervals chosen for a validation every
# few seconds at the expected step times (key: size:variant, variant without lr;
# bptt covers bptt_sgd and bptt_adam). The grid's max_iterations (2000) is kept.
declare -A T2_LOG_INTERVAL=([tiny:bptt]=50 [tiny:cdrge96]=5 [tiny:cdrge512]=2
                            [small:bptt]=25 [small:cdrge96]=2 [small:cdrge512]=1)
T2_DEFAULT_LOG_INTERVAL=5
# The paper's suggested learning rates: tier 0 of the priority list.
declare -A SUGGESTED_LR=([cdrge]=0.01 [fdrge]=0.01 [bptt_sgd]=0.0001 [bptt_adam]=0.001)
T2_BPTT_SGD_TIER_OFFSET=1
KILL_GRACE_S=10
MIN_CAP_PCT=70            # a run may be shortened to the lane's remaining budget, down to this % of its cap
MAX_CONSECUTIVE_FAILURES=3

# --------------------------------------------------------------- options --
GB_GPUS="1,2,3"
GB_BUDGET=380
GB_OUT=""
GB_ONLY=all
GB_DRY=0
GB_FORCE=0
GB_CAP_PCT=100

gb_usage() {
    cat <<EOF
Usage: $(basename "$0") [--gpus 1,2,3] [--budget_s 380] [--out DIR] [--only figure1|table2|all]
                        [--cap_pct 100] [--force] [--dry-run]

Paper-scale Figure 1 (DNC copy overfit) and Table 2 (LSTM length generalisation)
runs in priority order, one lane per GPU, each lane within --budget_s seconds of
wall clock and each run within its own cap (Figure 1: CD-RGE@512 ${FIG1_CAP_S[cdrge512]} s,
CD-RGE@96 ${FIG1_CAP_S[cdrge96]} s, FD-RGE@96 ${FIG1_CAP_S[fdrge96]} s, BPTT ${FIG1_CAP_S[bptt_sgd]} s; Table 2: $T2_CAP_S s).

  --gpus LIST      CUDA device ids, one lane each (default $GB_GPUS)
  --budget_s S     wall-clock seconds per lane, from the start of the command (default $GB_BUDGET)
  --out DIR        results folder (default results/gpu_runs)
  --only WHAT      figure1, table2 or all (default all)
  --cap_pct N      scale every run's cap by N percent (default 100)
  --force          rerun runs that finished or were cut earlier (default: skip them)
  --dry-run        print the plan and the commands; launch nothing (no GPU needed)
  -h, --help       this help

Rerunning the same command continues down the priority list. Afterwards:
  python scripts/report.py --gpu DIR     # the "Paper scale on H200" section of results/REPORT.md
EOF
}

gb_usage_error() {
    echo "error: $*" >&2
    gb_usage >&2
    exit 2
}

gb_is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

GB_CMDLINE="scripts/$(basename "$0")"
for _a in "$@"; do
    if [[ "$_a" =~ ^[A-Za-z0-9_./,:=+-]+$ ]]; then GB_CMDLINE+=" $_a"; else GB_CMDLINE+=" $(printf '%q' "$_a")"; fi
done

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) gb_usage; exit 0 ;;
        --dry-run|--dry_run) GB_DRY=1; shift ;;
        --force) GB_FORCE=1; shift ;;
        --gpus|--budget_s|--budget-s|--out|--only|--cap_pct|--cap-pct)
            [[ $# -ge 2 && -n "$2" ]] || gb_usage_error "$1 needs a value"
            case "$1" in
                --gpus) GB_GPUS="$2" ;;
                --budget_s|--budget-s) GB_BUDGET="$2" ;;
                --out) GB_OUT="$2" ;;
                --only) GB_ONLY="$2" ;;
                --cap_pct|--cap-pct) GB_CAP_PCT="$2" ;;
            esac
            shift 2
            ;;
        --*=*)
            _k="${1%%=*}" _v="${1#*=}"
            shift
            set -- "$_k" "$_v" "$@"
            ;;
        *) gb_usage_error "unknown option: $1" ;;
    esac
done

[[ "$GB_GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] || gb_usage_error "--gpus needs a comma list of device ids, got: $GB_GPUS"
IFS=, read -r -a GB_GPU_LIST <<< "$GB_GPUS"
declare -A _seen_gpu=()
for _g in "${GB_GPU_LIST[@]}"; do
    [[ -z "${_seen_gpu[$_g]:-}" ]] || gb_usage_error "--gpus lists GPU $_g twice"
    _seen_gpu[$_g]=1
done
if ! gb_is_uint "$GB_BUDGET" || [[ "$GB_BUDGET" -lt 1 ]]; then
    gb_usage_error "--budget_s needs a positive integer, got: $GB_BUDGET"
fi
if ! gb_is_uint "$GB_CAP_PCT" || [[ "$GB_CAP_PCT" -lt 1 ]]; then
    gb_usage_error "--cap_pct needs a positive integer, got: $GB_CAP_PCT"
fi
case "$GB_ONLY" in
    figure1|table2|all) ;;
    *) gb_usage_error "--only must be figure1, table2 or all, got: $GB_ONLY" ;;
esac
[[ -n "$GB_OUT" ]] || GB_OUT="$GB_ROOT/results/gpu_runs"
[[ "$GB_OUT" == /* ]] || GB_OUT="$PWD/$GB_OUT"
if [[ -z "${ZORNN_PYTHON:-}" ]] && ! command -v python >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
    export ZORNN_PYTHON=python3
fi

# ------------------------------------------------------------------ plan --
# One entry per run, in grid order; the priority order is P_ORDER.
P_NAME=() P_EXP=() P_VARIANT=() P_LR=() P_SIZE=() P_CMD=() P_CAP=() P_TIER=() P_KEY=()
T2_SIZES=()

gb_cap() {   # gb_cap SECONDS -> GB_CAP: scaled by --cap_pct, at least 1
    GB_CAP=$(($1 * GB_CAP_PCT / 100))
    [[ "$GB_CAP" -ge 1 ]] || GB_CAP=1
}

# gb_collect EXPERIMENT: append the runs the sourced script's build_grid registered
# (names: fig1_paper_VARIANT_lrLR, t2_paper_TASK_SIZE_VARIANT_lrLR).
gb_collect() {
    local exp="$1" i name rest variant lr size s
    OUT="$GB_OUT/$exp"
    for ((i = 0; i < ${#RUN_NAMES[@]}; i++)); do
        name="${RUN_NAMES[$i]}"
        rest="${name#*_paper_}"
        lr="${rest##*_lr}"
        rest="${rest%_lr*}"
        size=""
        if [[ "$exp" == table2 ]]; then
            for s in "${SIZES[@]}"; do
                if [[ "_${rest}" == *"_${s}_"* ]]; then size="$s"; rest="${rest#*_"${s}"_}"; break; fi
            done
        fi
        variant="$rest"
        P_NAME+=("$name") P_EXP+=("$exp") P_VARIANT+=("$variant") P_LR+=("$lr") P_SIZE+=("$size")
        P_CMD+=("$(repro_run_command "$i")")
    done
}

# Table 2's per-run log interval: wrap the script's add_t2_run (TASK SIZE VARIANT LR ...).
gb_wrap_add_t2_run() {
    eval "gb_orig_add_t2_run() $(declare -f add_t2_run | tail -n +2)"
    add_t2_run() {
        local size="$2" variant="$3" key
        case "$variant" in bptt_*) key=bptt ;; *) key="$variant" ;; esac
        LOG_INTERVAL="${T2_LOG_INTERVAL[$size:$key]:-$T2_DEFAULT_LOG_INTERVAL}"
        gb_orig_add_t2_run "$@"
    }
}

# Both scripts are sourced at the top level (not in a function: their
# `declare -A` must stay global); each sourcing resets the common runner's state.
if [[ "$GB_ONLY" != table2 ]]; then
    # shellcheck source=scripts/reproduce_figure1.sh
    source "$GB_SCRIPTS/reproduce_figure1.sh"
    SCALE=paper
    define_grid paper
    MAX_ITERS="$FIG1_MAX_ITERS"
    LOG_INTERVAL="$FIG1_LOG_INTERVAL"
    build_grid
    gb_collect figure1
fi
if [[ "$GB_ONLY" != figure1 ]]; then
    # shellcheck source=scripts/reproduce_table2.sh
    source "$GB_SCRIPTS/reproduce_table2.sh"
    SCALE=paper
    define_grid paper
    gb_wrap_add_t2_run
    build_grid
    gb_collect table2
    T2_SIZES=("${SIZES[@]}")
fi
GB_N=${#P_NAME[@]}
[[ "$GB_N" -gt 0 ]] || { echo "error: the paper grids are empty" >&2; exit 1; }

# Tiers: how many grid positions a run's lr is from its optimizer's suggested lr.
gb_suggested() {   # gb_suggested VARIANT -> GB_WANT, the suggested lr (empty: none)
    case "$1" in
        bptt_sgd|bptt_adam) GB_WANT="${SUGGESTED_LR[$1]}" ;;
        cdrge*) GB_WANT="${SUGGESTED_LR[cdrge]}" ;;
        fdrge*) GB_WANT="${SUGGESTED_LR[fdrge]}" ;;
        *) GB_WANT="" ;;
    esac
}

gb_assign_tiers() {
    local i j group pos spos tier size_rank e
    local -a lrs
    local -A lrs_of=()          # "exp|size|variant" -> its lrs, in grid order
    for ((i = 0; i < GB_N; i++)); do
        group="${P_EXP[$i]}|${P_SIZE[$i]}|${P_VARIANT[$i]}"
        case " ${lrs_of[$group]:-} " in *" ${P_LR[$i]} "*) ;; *) lrs_of[$group]+=" ${P_LR[$i]}" ;; esac
    done
    for ((i = 0; i < GB_N; i++)); do
        group="${P_EXP[$i]}|${P_SIZE[$i]}|${P_VARIANT[$i]}"
        read -r -a lrs <<< "${lrs_of[$group]}"
        gb_suggested "${P_VARIANT[$i]}"
        pos=0 spos=-1
        for ((j = 0; j < ${#lrs[@]}; j++)); do
            [[ "${lrs[$j]}" != "${P_LR[$i]}" ]] || pos=$j
            [[ "${lrs[$j]}" != "$GB_WANT" ]] || spos=$j
        done
        if [[ "$spos" -lt 0 ]]; then tier=$pos; else tier=$((pos > spos ? pos - spos : spos - pos)); fi
        size_rank=0 e=0
        if [[ "${P_EXP[$i]}" == table2 ]]; then
            e=1
            [[ "${P_VARIANT[$i]}" != bptt_sgd ]] || tier=$((tier + T2_BPTT_SGD_TIER_OFFSET))
            for ((j = 0; j < ${#T2_SIZES[@]}; j++)); do
                [[ "${T2_SIZES[$j]}" != "${P_SIZE[$i]}" ]] || size_rank=$j
            done
            gb_cap "$T2_CAP_S"
        else
            gb_cap "${FIG1_CAP_S[${P_VARIANT[$i]}]:-$FIG1_DEFAULT_CAP_S}"
        fi
        P_CAP[i]=$GB_CAP
        P_TIER[i]=$tier
        # within a tier: Figure 1, then Table 2 by size; then grid order (task, optimizer, lr)
        printf -v "P_KEY[$i]" '%03d %d %02d %05d' "$tier" "$e" "$size_rank" "$i"
    done
}
gb_assign_tiers
mapfile -t P_ORDER < <(for ((i = 0; i < GB_N; i++)); do printf '%s %d\n' "${P_KEY[$i]}" "$i"; done |
                       LC_ALL=C sort | awk '{print $NF}')

# Runs finished or cut by an earlier invocation are skipped (not with --force).
P_SKIP=()
for ((i = 0; i < GB_N; i++)); do
    P_SKIP[i]=0
    if [[ "$GB_FORCE" -eq 0 ]]; then
        _base="$GB_OUT/${P_EXP[$i]}/${P_NAME[$i]}"
        if [[ -s "$_base.jsonl" && ( -f "$_base.summary.json" || -f "$_base.cut" ) ]]; then P_SKIP[i]=1; fi
    fi
done

gb_show_path() {
    local p="$1"
    if [[ "$p" == "$GB_ROOT/"* ]]; then printf '%s' "${p#"$GB_ROOT"/}"; else printf '%s' "$p"; fi
}

# gb_fit_cap CAP REMAINING -> GB_FIT: the cap a run gets with REMAINING seconds left
# in its lane (its own cap, or what is left down to MIN_CAP_PCT of it); empty: no fit.
gb_fit_cap() {
    GB_FIT=""
    if [[ "$2" -ge "$1" ]]; then
        GB_FIT=$1
    elif [[ "$2" -ge 1 && $(($2 * 100)) -ge $(($1 * MIN_CAP_PCT)) ]]; then
        GB_FIT=$2
    fi
}

gb_lane_command() {   # gb_lane_command INDEX GPU CAP
    printf 'CUDA_VISIBLE_DEVICES=%s timeout -s INT -k %d %d %s' "$2" "$KILL_GRACE_S" "$3" "${P_CMD[$1]}"
}

# The plan if every run uses its whole cap: the runtime rule, simulated.
gb_simulate() {
    local nl=${#GB_GPU_LIST[@]} l best k i cap
    local -a t=() open=()
    local -A taken=()
    S_LANE=() S_START=() S_CAP=()
    for ((l = 0; l < nl; l++)); do t[l]=0; open[l]=1; done
    while :; do
        best=-1
        for ((l = 0; l < nl; l++)); do
            [[ "${open[$l]}" -eq 1 ]] || continue
            if [[ "$best" -lt 0 || "${t[$l]}" -lt "${t[$best]}" ]]; then best=$l; fi
        done
        [[ "$best" -ge 0 ]] || break
        local picked=-1
        for k in "${P_ORDER[@]}"; do
            [[ "${P_SKIP[$k]}" -eq 0 && -z "${taken[$k]:-}" ]] || continue
            gb_fit_cap "${P_CAP[$k]}" $((GB_BUDGET - t[best]))
            if [[ -n "$GB_FIT" ]]; then picked=$k; cap=$GB_FIT; break; fi
        done
        if [[ "$picked" -lt 0 ]]; then open[best]=0; continue; fi
        taken[$picked]=1
        S_LANE[picked]=$best
        S_START[picked]=${t[best]}
        S_CAP[picked]=$cap
        t[best]=$((t[best] + cap))
    done
}

gb_print_plan() {
    gb_simulate
    local nl=${#GB_GPU_LIST[@]} l k n_sched=0 n_skip=0 n_left=0 busy
    echo "# Paper-scale Figure 1 / Table 2 batch: ${#GB_GPU_LIST[@]} GPU lane(s) (GPUs $GB_GPUS), $GB_BUDGET s per lane," \
         "--only $GB_ONLY, caps x${GB_CAP_PCT}%"
    echo "# results in $(gb_show_path "$GB_OUT") (figure1/, table2/, logs/); run from the repository root ($GB_ROOT)"
    for ((l = 0; l < nl; l++)); do
        local lines=() count=0
        busy=0
        for k in "${P_ORDER[@]}"; do
            [[ "${S_LANE[$k]:-}" == "$l" ]] || continue
            count=$((count + 1))
            busy=$((busy + S_CAP[k]))
            lines+=("# lane $((l + 1)) GPU ${GB_GPU_LIST[$l]} | t+${S_START[$k]}s | cap ${S_CAP[$k]}s | tier ${P_TIER[$k]} | ${P_EXP[$k]} | ${P_NAME[$k]}")
            lines+=("$(gb_lane_command "$k" "${GB_GPU_LIST[$l]}" "${S_CAP[$k]}")")
        done
        echo "# lane $((l + 1)) GPU ${GB_GPU_LIST[$l]}: $count run(s), ${busy} s of $GB_BUDGET s if every run uses its whole cap"
        [[ "$count" -eq 0 ]] || printf '%s\n' "${lines[@]}"
    done
    for k in "${P_ORDER[@]}"; do
        if [[ -n "${S_LANE[$k]:-}" ]]; then n_sched=$((n_sched + 1))
        elif [[ "${P_SKIP[$k]}" -eq 1 ]]; then n_skip=$((n_skip + 1))
        else n_left=$((n_left + 1)); fi
    done
    echo "# planned: $n_sched run(s); skipped (finished or cut earlier; --force reruns): $n_skip;" \
         "not scheduled (over budget; rerun the command to continue): $n_left"
    local shown=0
    for k in "${P_ORDER[@]}"; do
        [[ -z "${S_LANE[$k]:-}" && "${P_SKIP[$k]}" -eq 0 ]] || continue
        [[ "$shown" -lt 12 ]] || break
        echo "# next: tier ${P_TIER[$k]} | cap ${P_CAP[$k]}s | ${P_EXP[$k]} | ${P_NAME[$k]}"
        shown=$((shown + 1))
    done
    echo "# afterwards: $(gb_report_command)"
}

gb_report_command() {
    printf '%q scripts/report.py --gpu %q' "$REPRO_PYTHON" "$(gb_show_path "$GB_OUT")"
}

if [[ "$GB_DRY" -eq 1 ]]; then
    gb_print_plan
    exit 0
fi

# ------------------------------------------------------------------- run --
command -v timeout >/dev/null 2>&1 || { echo "error: 'timeout' (GNU coreutils) is needed" >&2; exit 1; }
mkdir -p "$GB_OUT/logs" "$GB_OUT/figure1" "$GB_OUT/table2"
GB_ID="$(date -u +%Y%m%dT%H%M%SZ)-$$"
GB_CLAIMS="$GB_OUT/.claims-$GB_ID"
mkdir -p "$GB_CLAIMS"
GB_LOG_BATCH="$GB_OUT/batch_runs.jsonl"

{
    printf 'rank\ttier\texperiment\trun\tcap_s\n'
    _r=0
    for k in "${P_ORDER[@]}"; do
        printf '%d\t%d\t%s\t%s\t%d\n' "$_r" "${P_TIER[$k]}" "${P_EXP[$k]}" "${P_NAME[$k]}" "${P_CAP[$k]}"
        _r=$((_r + 1))
    done
} > "$GB_OUT/priority.tsv"

echo "[gpu-batch] $GB_N run(s) in the priority list; ${#GB_GPU_LIST[@]} lane(s) on GPU(s) $GB_GPUS, $GB_BUDGET s each; results in $(gb_show_path "$GB_OUT")"

# Fail fast (a few seconds) when torch cannot see the GPUs, instead of failing every run.
if ! CUDA_VISIBLE_DEVICES="$GB_GPUS" "$REPRO_PYTHON" -c "
import sys, torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(f'[gpu-batch] torch {torch.__version__}: {n} CUDA device(s) visible of the {len(sys.argv) - 1} asked for')
sys.exit(0 if n == len(sys.argv) - 1 else 3)
" "${GB_GPU_LIST[@]}"; then
    echo "error: torch does not see the GPUs $GB_GPUS (CUDA_VISIBLE_DEVICES=$GB_GPUS); nothing launched" >&2
    rm -rf "$GB_CLAIMS"
    exit 1
fi

# gb_run_one LANE GPU INDEX CAP -> sets GB_OUTCOME (done|cut|failed)
gb_run_one() {
    local lane="$1" gpu="$2" k="$3" cap="$4"
    local name="${P_NAME[$k]}" exp="${P_EXP[$k]}"
    local base="$GB_OUT/$exp/$name" log="$GB_OUT/logs/$name.log"
    local t0 rc wall lines last
    rm -f "$base.failed" "$base.cut" "$base.summary.json"
    t0=$SECONDS
    echo "[lane $lane gpu $gpu] t+${t0}s start $name (tier ${P_TIER[$k]}, cap ${cap} s)"
    (cd "$GB_ROOT" && export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES="$gpu" &&
        eval "exec timeout -s INT -k $KILL_GRACE_S $cap ${P_CMD[$k]}") >"$log" 2>&1 &
    GB_CHILD=$!
    set +e
    wait "$GB_CHILD"
    rc=$?
    set -e
    GB_CHILD=""
    wall=$((SECONDS - t0))
    lines=0
    [[ -f "$base.jsonl" ]] && lines=$(grep -c . "$base.jsonl" || true)
    last=""
    if [[ "$lines" -gt 0 ]]; then
        last="$("$REPRO_PYTHON" -c "
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
except Exception:
    sys.exit(0)
parts = ['step %s' % r.get('step'), 'train_loss %.4g' % r['train_loss'] if r.get('train_loss') is not None else '']
if r.get('val_accuracy') is not None:
    parts.append('val_acc %.3f' % r['val_accuracy'])
print(', '.join(p for p in parts if p))
" "$base.jsonl" 2>/dev/null || true)"
    fi
    if [[ "$rc" -eq 0 && -f "$base.summary.json" ]]; then
        GB_OUTCOME="done"
    elif [[ "$rc" -eq 124 || "$rc" -eq 137 ]]; then
        GB_OUTCOME="cut"
        printf '{"cap_s": %d, "exit_status": %d, "wall_s": %d, "jsonl_lines": %d, "lane": %d, "gpu": "%s"}\n' \
            "$cap" "$rc" "$wall" "$lines" "$lane" "$gpu" > "$base.cut"
    else
        GB_OUTCOME="failed"
        { echo "exit status $rc"; tail -n 20 "$log"; } > "$base.failed"
    fi
    printf '{"invocation": "%s", "lane": %d, "gpu": "%s", "experiment": "%s", "run": "%s", "tier": %d, "cap_s": %d, "start_s": %d, "wall_s": %d, "exit_status": %d, "outcome": "%s", "jsonl_lines": %d}\n' \
        "$GB_ID" "$lane" "$gpu" "$exp" "$name" "${P_TIER[$k]}" "$cap" "$t0" "$wall" "$rc" "$GB_OUTCOME" "$lines" >> "$GB_LOG_BATCH"
    local what="$GB_OUTCOME"
    [[ "$what" == cut ]] && what="cut at its ${cap} s cap"
    [[ "$what" == failed ]] && what="FAILED (exit $rc; see $(gb_show_path "$log"))"
    echo "[lane $lane gpu $gpu] t+${SECONDS}s $name: $what after ${wall} s, $lines JSON line(s)${last:+; last: $last}"
}

gb_lane() {   # gb_lane LANE(1-based) GPU
    local lane="$1" gpu="$2" k cap remaining picked fails=0 n=0
    GB_CHILD=""
    trap '[[ -n "$GB_CHILD" ]] && kill -TERM "$GB_CHILD" 2>/dev/null; exit 143' TERM INT
    while :; do
        remaining=$((GB_BUDGET - SECONDS))
        picked=-1
        for k in "${P_ORDER[@]}"; do
            [[ "${P_SKIP[$k]}" -eq 0 && ! -d "$GB_CLAIMS/$k" ]] || continue
            gb_fit_cap "${P_CAP[$k]}" "$remaining"
            [[ -n "$GB_FIT" ]] || continue
            cap=$GB_FIT
            if mkdir "$GB_CLAIMS/$k" 2>/dev/null; then picked=$k; break; fi
        done
        [[ "$picked" -ge 0 ]] || break
        gb_run_one "$lane" "$gpu" "$picked" "$cap"
        n=$((n + 1))
        if [[ "$GB_OUTCOME" == failed ]]; then fails=$((fails + 1)); else fails=0; fi
        if [[ "$fails" -ge "$MAX_CONSECUTIVE_FAILURES" ]]; then
            echo "[lane $lane gpu $gpu] stopping: $fails runs in a row failed (see $(gb_show_path "$GB_OUT/logs"))" >&2
            break
        fi
    done
    echo "[lane $lane gpu $gpu] t+${SECONDS}s lane finished after $n run(s)"
}

GB_LANE_PIDS=()
gb_stop_lanes() {
    local p
    for p in ${GB_LANE_PIDS[@]+"${GB_LANE_PIDS[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done
    wait || true
    rm -rf "$GB_CLAIMS"
    echo "[gpu-batch] interrupted; the JSON lines written so far are kept" >&2
    exit 130
}
trap gb_stop_lanes INT TERM

for ((l = 0; l < ${#GB_GPU_LIST[@]}; l++)); do
    gb_lane $((l + 1)) "${GB_GPU_LIST[$l]}" &
    GB_LANE_PIDS+=($!)
done
wait || true
trap - INT TERM
rm -rf "$GB_CLAIMS"
GB_WALL=$SECONDS

# ---------------------------------------------------------------- summary --
declare -A _done=() _cut=() _failed=() _ran=()
n_done=0 n_cut=0 n_failed=0 n_ran=0
while IFS= read -r _line; do
    [[ "$_line" == *"\"invocation\": \"$GB_ID\""* ]] || continue
    _exp="$(sed -E 's/.*"experiment": "([^"]*)".*/\1/' <<< "$_line")"
    _out="$(sed -E 's/.*"outcome": "([^"]*)".*/\1/' <<< "$_line")"
    _ran[$_exp]=$(( ${_ran[$_exp]:-0} + 1 ))
    n_ran=$((n_ran + 1))
    case "$_out" in
        done) n_done=$((n_done + 1)) ;;
        cut) n_cut=$((n_cut + 1)) ;;
        failed) n_failed=$((n_failed + 1)); _failed[$_exp]=$(( ${_failed[$_exp]:-0} + 1 )) ;;
    esac
done < <(cat "$GB_LOG_BATCH" 2>/dev/null || true)

n_skip=0 n_left=0
for ((i = 0; i < GB_N; i++)); do
    _base="$GB_OUT/${P_EXP[$i]}/${P_NAME[$i]}"
    if [[ "${P_SKIP[$i]}" -eq 1 ]]; then n_skip=$((n_skip + 1))
    elif [[ ! -f "$_base.summary.json" && ! -f "$_base.cut" ]]; then n_left=$((n_left + 1)); fi
done

# run_info.json per experiment, in the format of the reproduce scripts (report.py reads it).
JOBS=${#GB_GPU_LIST[@]}
SCALE=paper
for _exp in figure1 table2; do
    [[ "${_ran[$_exp]:-0}" -gt 0 ]] || continue
    RUN_NAMES=()
    _skipped=0
    for ((i = 0; i < GB_N; i++)); do
        [[ "${P_EXP[$i]}" == "$_exp" ]] || continue
        RUN_NAMES+=("${P_NAME[$i]}")
        [[ "${P_SKIP[$i]}" -eq 0 ]] || _skipped=$((_skipped + 1))
    done
    OUT="$GB_OUT/$_exp"
    REPRO_EXPERIMENT="$_exp"
    repro_write_run_info "$GB_WALL" "${_ran[$_exp]}" "$_skipped" "${_failed[$_exp]:-0}" "$GB_CMDLINE" || true
done

echo "[gpu-batch] finished in ${GB_WALL} s: $n_ran run(s) executed: $n_done done, $n_cut cut by their time cap," \
     "$n_failed failed; $n_skip skipped (finished or cut earlier); $n_left of $GB_N not run yet" \
     "(rerun the same command to continue)"
echo "[gpu-batch] per run: $(gb_show_path "$GB_LOG_BATCH"); report: $(gb_report_command)"
exit 0
