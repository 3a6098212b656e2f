#!/usr/bin/env bash
# Show the tail of every running run of this project: lists the screen
# sessions named "${ZORNN_SCREEN_PREFIX:-zornn}_*" and prints the last lines of
# each run's logs/<name>.log (or a hardcopy of the session's window when the
# log file is missing).
set -euo pipefail

# shellcheck source=scripts/_screen_sessions.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_screen_sessions.sh"

usage() {
    cat <<EOF
Usage: $(basename "$0") [-n N] [--all] [--help]

List the screen sessions named '${ZORNN_PREFIX}_*' and show the last N lines
of each run's log (${ZORNN_REPO_ROOT}/logs/<name>.log).

Options:
  -n, --lines N   lines to show per run (default 20)
  -a, --all       also show logs/${ZORNN_PREFIX}_*.log of runs whose session
                  has ended
  -h, --help      show this help
EOF
}

LINES_PER_RUN=20
SHOW_ALL=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -a|--all) SHOW_ALL=1; shift ;;
        -n|--lines)
            if [[ $# -lt 2 ]] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
                echo "error: $1 needs a non-negative integer" >&2
                usage >&2
                exit 2
            fi
            LINES_PER_RUN="$2"
            shift 2
            ;;
        -n*) set -- -n "${1#-n}" "${@:2}" ;;
        --lines=*) set -- -n "${1#--lines=}" "${@:2}" ;;
        *) echo "error: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

zornn_require_screen

LOG_DIR="${ZORNN_REPO_ROOT}/logs"
TMP_DIR=""
cleanup() { [[ -z "$TMP_DIR" ]] || rm -rf "$TMP_DIR"; }
trap cleanup EXIT

# Write a hardcopy (with scrollback) of session $1 to file $2. The session's
# screen process writes the file asynchronously, so wait for it briefly.
hardcopy_session() {
    local id="$1" out="$2" i
    screen -S "$id" -X hardcopy -h "$out" >/dev/null 2>&1 || return 1
    for ((i = 0; i < 20; i++)); do
        [[ -s "$out" ]] && return 0
        sleep 0.1
    done
    [[ -e "$out" ]]
}

mapfile -t SESSIONS < <(zornn_list_sessions)
declare -A LIVE=()

if [[ ${#SESSIONS[@]} -eq 0 ]]; then
    echo "No screen sessions named '${ZORNN_PREFIX}_*' are running."
else
    echo "${#SESSIONS[@]} screen session(s) named '${ZORNN_PREFIX}_*':"
    for id in "${SESSIONS[@]}"; do echo "  ${id}"; done
fi

for id in ${SESSIONS[@]+"${SESSIONS[@]}"}; do
    name="${id#*.}"
    LIVE["$name"]=1
    log="${LOG_DIR}/${name}.log"
    echo
    echo "===== ${name} (session ${id}) ====="
    if [[ -f "$log" ]]; then
        tail -n "$LINES_PER_RUN" "$log"
        continue
    fi
    [[ -n "$TMP_DIR" ]] || TMP_DIR="$(mktemp -d)"
    copy="${TMP_DIR}/${name}.hardcopy"
    if hardcopy_session "$id" "$copy"; then
        echo "(no ${log}; screen hardcopy follows)"
        # Drop the trailing blank lines of the window before taking the tail.
        sed -e ':a' -e '/^\n*$/{$d;N;ba' -e '}' "$copy" | tail -n "$LINES_PER_RUN"
    else
        echo "(no ${log} and the screen hardcopy failed)"
    fi
done

if [[ "$SHOW_ALL" -eq 1 ]]; then
    shopt -s nullglob
    for log in "${LOG_DIR}/${ZORNN_PREFIX}_"*.log; do
        name="$(basename "$log" .log)"
        [[ -z "${LIVE[$name]:-}" ]] || continue
        echo
        echo "===== ${name} (finished: no session) ====="
        tail -n "$LINES_PER_RUN" "$log"
    done
fi
exit 0
