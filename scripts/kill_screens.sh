#!/usr/bin/env bash
# End this project's screen sessions: only those whose name starts with
# "${ZORNN_SCREEN_PREFIX:-zornn}_". Other screen sessions are left alone.
set -euo pipefail

# shellcheck source=scripts/_screen_sessions.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_screen_sessions.sh"

usage() {
    cat <<EOF
Usage: $(basename "$0") [--dry-run] [--help]

End every screen session whose name starts with '${ZORNN_PREFIX}_'
(set ZORNN_SCREEN_PREFIX to change the prefix). Other sessions are untouched.

Options:
  --dry-run    list the sessions that would be ended and end none
  -h, --help   show this help
EOF
}

DRY_RUN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) echo "error: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

zornn_require_screen

mapfile -t SESSIONS < <(zornn_list_sessions)
if [[ ${#SESSIONS[@]} -eq 0 ]]; then
    echo "No screen sessions named '${ZORNN_PREFIX}_*' found; killed 0 session(s)."
    exit 0
fi

killed=0
failed=0
for id in "${SESSIONS[@]}"; do
    if [[ "$DRY_RUN" -eq 1 ]]; then
        echo "[dry-run] screen -S ${id} -X quit"
        continue
    fi
    if screen -S "$id" -X quit >/dev/null 2>&1; then
        echo "killed ${id}"
        killed=$((killed + 1))
    else
        echo "warning: could not end ${id} (already gone?)" >&2
        failed=$((failed + 1))
    fi
done

if [[ "$DRY_RUN" -eq 1 ]]; then
    echo "Would kill ${#SESSIONS[@]} session(s)."
else
    echo "Killed ${killed} session(s)."
    [[ "$failed" -eq 0 ]] || echo "${failed} session(s) could not be ended." >&2
fi
