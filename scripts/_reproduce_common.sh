# shellcheck shell=bash disable=SC2034
# Shared runner of the one-command reproductions (reproduce_figure1.sh,
# reproduce_table2.sh). Sourced, never executed directly.
#
# A script defines `usage`, `define_grid SCALE` (sets its grid variables for
# the scale) and `build_grid` (calls `repro_add_run NAME HARNESS_ARG...` once
# per run), sets REPRO_EXPERIMENT (figure1 | table2) and REPRO_TITLE, then
# calls `repro_main "$@"`.
#
# Runs go one after another (or --jobs N at a time) in the foreground: no
# screen, no GPU detection. For the screen-parallel sweep over all GPUs of a
# node use scripts/run_dnc_experiments.sh / scripts/run_lstm_experiments.sh.
#
# Per run, under OUT: NAME.jsonl (--metrics_out, the harness's JSON lines),
# NAME.summary.json (--summary_out, written only when the run finishes: it
# marks the run done, so a rerun of the command skips it unless --force) and,
# when the harness exits non-zero, NAME.failed (exit status and log tail).
# stdout/stderr of each run go to LOGS/NAME.log. OUT/run_info.json records the
# scale, date, machine, command line and wall time for the report.
#
# Environment: ZORNN_PYTHON (python interpreter, default: python).

REPRO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPRO_PYTHON="${ZORNN_PYTHON:-python}"
REPRO_HARNESS="rge_series_experiments.py"

SCALE=cpu
DRY_RUN=0
FORCE=0
DO_REPORT=1
JOBS=1
OUT=""
LOGS=""
REPORT_FILE="results/REPORT.md"
MAX_ITERS_OVERRIDE=""
DEVICE_OVERRIDE=""
SIZES_OVERRIDE=""
ONLY=()
RUN_NAMES=()
RUN_ARGS=()

repro_die() {
    echo "error: $*" >&2
    exit 1
}

repro_usage_error() {
    echo "error: $*" >&2
    usage >&2
    exit 2
}

repro_is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

# An absolute path for a path given relative to the caller's directory.
repro_abspath() {
    if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi
}

repro_parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -h|--help) usage; exit 0 ;;
            --dry-run) DRY_RUN=1; shift ;;
            --force) FORCE=1; shift ;;
            --no-report) DO_REPORT=0; shift ;;
            --scale|--out|--logs|--jobs|--max-iters|--only|--report|--device|--sizes)
                [[ $# -ge 2 && -n "$2" ]] || repro_usage_error "$1 needs a value"
                case "$1" in
                    --scale) SCALE="$2" ;;
                    --out) OUT="$(repro_abspath "$2")" ;;
                    --logs) LOGS="$(repro_abspath "$2")" ;;
                    --jobs) JOBS="$2" ;;
                    --max-iters) MAX_ITERS_OVERRIDE="$2" ;;
                    --only) ONLY+=("$2") ;;
                    --report) REPORT_FILE="$(repro_abspath "$2")" ;;
                    --device) DEVICE_OVERRIDE="$2" ;;
                    --sizes) SIZES_OVERRIDE="$2" ;;
                esac
                shift 2
                ;;
            --*=*)
                local key="${1%%=*}" val="${1#*=}"
                shift
                set -- "$key" "$val" "$@"
                ;;
            *) repro_usage_error "unknown option: $1" ;;
        esac
    done
    case "$SCALE" in
        cpu|paper) ;;
        *) repro_usage_error "--scale must be cpu or paper, got: $SCALE" ;;
    esac
    if ! repro_is_uint "$JOBS" || [[ "$JOBS" -lt 1 ]]; then
        repro_usage_error "--jobs needs a positive integer, got: $JOBS"
    fi
    if [[ -n "$MAX_ITERS_OVERRIDE" ]] && { ! repro_is_uint "$MAX_ITERS_OVERRIDE" || [[ "$MAX_ITERS_OVERRIDE" -lt 1 ]]; }; then
        repro_usage_error "--max-iters needs a positive integer, got: $MAX_ITERS_OVERRIDE"
    fi
}

# Register one run: repro_add_run NAME HARNESS_ARG...
repro_add_run() {
    local name="$1"
    shift
    local existing
    for existing in ${RUN_NAMES[@]+"${RUN_NAMES[@]}"}; do
        [[ "$existing" == "$name" ]] && repro_die "duplicate run name in grid: $name"
    done
    if [[ ${#ONLY[@]} -gt 0 ]]; then
        local pat keep=0
        for pat in "${ONLY[@]}"; do [[ "$name" == *"$pat"* ]] && keep=1; done
        [[ "$keep" -eq 1 ]] || return 0
    fi
    RUN_NAMES+=("$name")
    local args
    args="$(printf ' %q' "$@")"
    RUN_ARGS+=("${args# }")
}

# Shown paths: relative to the repo root when inside it (the commands run there).
repro_show_path() {
    local p="$1"
    if [[ "$p" == "$REPRO_ROOT/"* ]]; then printf '%s' "${p#"$REPRO_ROOT"/}"; else printf '%s' "$p"; fi
}

repro_run_command() {
    local i="$1"
    local name="${RUN_NAMES[$i]}"
    printf '%q %s %s --metrics_out %q --summary_out %q' "$REPRO_PYTHON" "$REPRO_HARNESS" "${RUN_ARGS[$i]}" \
        "$(repro_show_path "$OUT/$name.jsonl")" "$(repro_show_path "$OUT/$name.summary.json")"
}

repro_report_command() {
    printf '%q scripts/report.py --%s %q --tag %q --report %q' "$REPRO_PYTHON" "$REPRO_EXPERIMENT" \
        "$(repro_show_path "$OUT")" "$SCALE" "$(repro_show_path "$REPORT_FILE")"
}

repro_fmt_seconds() {
    local s="$1"
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# Run one grid point in the foreground of a background job; never fails the pool.
repro_run_one() {
    local i="$1"
    local name="${RUN_NAMES[$i]}"
    local log="$LOGS/$name.log"
    local cmd t0 rc
    cmd="$(repro_run_command "$i")"
    t0=$SECONDS
    rm -f "$OUT/$name.failed" "$OUT/$name.summary.json"
    echo "[$REPRO_EXPERIMENT] start $name (log: $(repro_show_path "$log"))"
    set +e
    (cd "$REPRO_ROOT" && eval "PYTHONUNBUFFERED=1 $cmd") >"$log" 2>&1
    rc=$?
    set -e
    if [[ "$rc" -eq 0 ]]; then
        echo "[$REPRO_EXPERIMENT] done  $name in $(repro_fmt_seconds $((SECONDS - t0))): $(tail -n 1 "$log")"
    else
        { echo "exit status $rc"; tail -n 20 "$log"; } >"$OUT/$name.failed"
        echo "[$REPRO_EXPERIMENT] FAILED $name (exit $rc) after $(repro_fmt_seconds $((SECONDS - t0))); see $(repro_show_path "$log")" >&2
    fi
    return 0
}

# Append this invocation to OUT/run_info.json (kept across resumed invocations;
# one that executed nothing leaves the file alone).
repro_write_run_info() {
    local wall="$1" ran="$2" skipped="$3" failed="$4" cmdline="$5"
    [[ "$ran" -gt 0 ]] || return 0
    local cpu_model gpus="" commit
    cpu_model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        gpus="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | paste -sd, - || true)"
    fi
    commit="$(git -C "$REPRO_ROOT" rev-parse --short HEAD 2>/dev/null || true)"
    R_FILE="$OUT/run_info.json" R_EXPERIMENT="$REPRO_EXPERIMENT" R_SCALE="$SCALE" R_COMMAND="$cmdline" \
    R_WALL="$wall" R_GRID="${#RUN_NAMES[@]}" R_RAN="$ran" R_SKIPPED="$skipped" R_FAILED="$failed" R_JOBS="$JOBS" \
    R_CORES="$(nproc 2>/dev/null || echo 0)" R_CPU="$cpu_model" R_GPUS="$gpus" R_COMMIT="$commit" \
    "$REPRO_PYTHON" - <<'PY'
import datetime, json, os
e = os.environ
path = e["R_FILE"]
try:
    with open(path) as f:
        info = json.load(f)
except (OSError, ValueError):
    info = {}
inv = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
       "command": e["R_COMMAND"], "wall_s": int(e["R_WALL"]), "runs_executed": int(e["R_RAN"]),
       "runs_skipped_done": int(e["R_SKIPPED"]), "runs_failed": int(e["R_FAILED"]), "jobs": int(e["R_JOBS"]),
       "cpu_cores": int(e["R_CORES"]), "cpu_model": e["R_CPU"], "gpus": e["R_GPUS"], "git_commit": e["R_COMMIT"]}
invocations = info.get("invocations", []) + [inv]
info = dict(inv, experiment=e["R_EXPERIMENT"], scale=e["R_SCALE"], runs_in_grid=int(e["R_GRID"]),
            wall_s_total=sum(i["wall_s"] for i in invocations), invocations=invocations)
with open(path, "w") as f:
    json.dump(info, f, indent=1)
    f.write("\n")
PY
}

repro_main() {
    local script_name="$1"
    shift
    local cmdline="scripts/$script_name"
    local a
    for a in "$@"; do cmdline+=" $(printf '%q' "$a")"; done
    repro_parse_args "$@"
    [[ -n "$OUT" ]] || OUT="$REPRO_ROOT/results/$REPRO_EXPERIMENT/$SCALE"
    [[ -n "$LOGS" ]] || LOGS="$REPRO_ROOT/logs/$REPRO_EXPERIMENT/$SCALE"
    [[ "$REPORT_FILE" == /* ]] || REPORT_FILE="$REPRO_ROOT/$REPORT_FILE"

    define_grid "$SCALE"
    [[ -z "$MAX_ITERS_OVERRIDE" ]] || MAX_ITERS="$MAX_ITERS_OVERRIDE"
    [[ -z "$DEVICE_OVERRIDE" ]] || DEVICE="$DEVICE_OVERRIDE"
    build_grid
    local n=${#RUN_NAMES[@]}
    if [[ "$n" -eq 0 ]]; then
        if [[ ${#ONLY[@]} -gt 0 ]]; then repro_die "no run name contains any of: ${ONLY[*]}"; fi
        repro_die "the grid is empty; edit the arrays in define_grid"
    fi

    local i
    if [[ "$DRY_RUN" -eq 1 ]]; then
        echo "# $REPRO_TITLE, --scale $SCALE: $n run(s), JSON lines in $(repro_show_path "$OUT"), logs in $(repro_show_path "$LOGS")"
        echo "# run from the repository root ($REPRO_ROOT)"
        for ((i = 0; i < n; i++)); do repro_run_command "$i"; echo; done
        if [[ "$DO_REPORT" -eq 1 ]]; then repro_report_command; echo; fi
        return 0
    fi

    mkdir -p "$OUT" "$LOGS"
    echo "[$REPRO_EXPERIMENT] $REPRO_TITLE, --scale $SCALE: $n run(s), $JOBS at a time; JSON lines in $(repro_show_path "$OUT")"
    local t_start=$SECONDS ran=0 skipped=0
    for ((i = 0; i < n; i++)); do
        local name="${RUN_NAMES[$i]}"
        if [[ "$FORCE" -eq 0 && -f "$OUT/$name.summary.json" && -f "$OUT/$name.jsonl" ]]; then
            echo "[$REPRO_EXPERIMENT] skip  $name: finished earlier ($(repro_show_path "$OUT/$name.summary.json") exists; --force reruns)"
            skipped=$((skipped + 1))
            continue
        fi
        while [[ "$(jobs -rp | wc -l)" -ge "$JOBS" ]]; do wait -n || true; done
        repro_run_one "$i" &
        ran=$((ran + 1))
    done
    wait || true
    local failed=0
    for ((i = 0; i < n; i++)); do [[ -f "$OUT/${RUN_NAMES[$i]}.failed" ]] && failed=$((failed + 1)); done
    local wall=$((SECONDS - t_start))
    repro_write_run_info "$wall" "$ran" "$skipped" "$failed" "$cmdline"
    echo "[$REPRO_EXPERIMENT] $ran run(s) executed, $skipped skipped, $failed failed in $(repro_fmt_seconds "$wall")"
    if [[ "$DO_REPORT" -eq 1 ]]; then
        local rcmd
        rcmd="$(repro_report_command)"
        echo "[$REPRO_EXPERIMENT] $rcmd"
        (cd "$REPRO_ROOT" && eval "$rcmd")
    fi
    [[ "$failed" -eq 0 ]] || echo "[$REPRO_EXPERIMENT] note: $failed run(s) failed (diverged or crashed); the report marks them" >&2
    return 0
}
