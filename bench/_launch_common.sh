# shellcheck shell=bash
# Shared by bench/run_scaling.sh and bench/run_smoke_7b.sh (sourced). The caller sets PY (the Python
# interpreter), DEVICE (cuda|cpu) and DRY (1 for a dry run) before calling these.

die() { echo "${0##*/}: error: $*" >&2; exit 2; }
is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }

# visible_gpus DRY_DEFAULT: how many GPUs this machine shows (CUDA_VISIBLE_DEVICES, nvidia-smi, torch);
# 1 with --device cpu. None visible: a dry run plans for DRY_DEFAULT, a real run stops.
visible_gpus() {
  local n _v
  if [[ "$DEVICE" == cpu ]]; then
    echo 1; return
  elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -r -a _v <<<"$CUDA_VISIBLE_DEVICES"; n=${#_v[@]}
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    n=$(nvidia-smi -L | grep -c '^GPU ')
  else
    n=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  fi
  if [[ "$n" -lt 1 ]]; then
    [[ $DRY == 1 ]] || die "no GPU visible; pass --gpus N, or --device cpu"
    echo "# no GPU visible: planning for --gpus $1 (pass --gpus N)" >&2; n=$1
  fi
  echo "$n"
}

# omp_threads WORLD: OpenMP threads per rank, min(16, cores / world), at least 1
omp_threads() {
  local t=$(( $(nproc 2>/dev/null || echo 1) / $1 ))
  [[ $t -lt 1 ]] && t=1; [[ $t -gt 16 ]] && t=16; echo "$t"
}

# torchrun_words: the torchrun command, one word per line (PYTHON=/path/python: that interpreter with
# torchrun as its module; also when no torchrun is on PATH for a real run)
torchrun_words() {
  if [[ -n "${PYTHON:-}" ]] || { [[ $DRY == 0 ]] && ! command -v torchrun >/dev/null 2>&1; }; then
    printf '%s\n' "$PY" -m torch.distributed.run
  else
    echo torchrun
  fi
}

# NVLink multicast stays off (it can take a shared host's GPUs out of service); unbuffered Python logs
export_run_env() {
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
}

# machine_info: sets GPU_INFO (nvidia-smi's GPU list), GIT_COMMIT and GIT_DIRTY for a run's records
machine_info() {
  GPU_INFO=$(nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true)
  GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  GIT_DIRTY=$( [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && echo true || echo false)
}

# kv_json FILE key=value...: a JSON object of the pairs (numbers stay numbers, the rest strings)
kv_json() {
  local file=$1; shift
  "$PY" - "$file" "$@" <<'PY'
import json, sys
rec = {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    for cast in (int, float):
        try:
            v = cast(v)
            break
        except ValueError:
            pass
    rec[k] = v
json.dump(rec, open(sys.argv[1], "w"), indent=1)
PY
}
