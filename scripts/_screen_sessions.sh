# shellcheck shell=bash disable=SC2034
# Helpers shared by capture_screen_logs.sh and kill_screens.sh. Sourced.

ZORNN_PREFIX="${ZORNN_SCREEN_PREFIX:-zornn}"
ZORNN_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

zornn_require_screen() {
    if ! command -v screen >/dev/null 2>&1; then
        echo "error: GNU screen is not installed. Install it with: sudo apt-get update && sudo apt-get install -y screen" >&2
        exit 1
    fi
}

# Print "PID.NAME" for every screen session whose name starts with
# "${ZORNN_PREFIX}_", sorted by name. `screen -ls` exits non-zero both when
# sessions exist and when none do, so its status is ignored.
zornn_list_sessions() {
    local listing
    listing="$(screen -ls 2>/dev/null || true)"
    awk -v prefix="${ZORNN_PREFIX}_" '
        /^[[:space:]]+[0-9]+\./ {
            id = $1
            name = id
            sub(/^[0-9]+\./, "", name)
            if (index(name, prefix) == 1) print name "\t" id
        }' <<< "$listing" | sort | cut -f2
}
