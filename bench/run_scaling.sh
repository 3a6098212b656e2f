#!/usr/bin/env bash
# Throughput scaling of the distributed trainer (issue 7): torchrun distributed_rge.py over 1, 2, 4 (8) GPUs at a
# fixed number of probes per GPU (weak scaling), one run per (size, world size), then bench/scaling_report.py.
#
#   bash bench/run_scaling.sh --dry-run --gpus 4                  # print the commands (no GPU needed)
#   bash bench/run_scaling.sh --gpus 4 --sizes large,xlarge --worlds 1,4,2 \
#        --warmup 3,xlarge=1 --iters 5,xlarge=3 --budget-s 140 --out "$OUT"
#
# Shapes (the paper's, as bench/bench_step.py): LSTM, batch 1024, T = 11 (--task lm: <bos> + 10 tokens of the
# embedded corpus, char vocabulary of 100 ids), input 100, bf16 weights (fp32 master), 12 probes per GPU.
# Every run: --mode test (one fixed batch, no validation), --verbose true (phase timings per step),
# --metrics_out (rank 0's JSON lines: step time, phases, bytes communicated, peak memory) and --summary_out
# (every rank: final theta checksum after the end-of-run replica check, peak memory, start-up timings).
# --sync_check_iters is set past the run, so no check falls inside a timed step; the trainer always checks the
# replicas once more after its last step (a mismatch exits 4).
#
# Output under --out (default $OUT, else bench/results), at most 4 files, refreshed after every run so a run cut
# short keeps what was measured: scaling_<stamp>.md and .json (the report), scaling_<stamp>.log (all output),
# scaling_<stamp>_raw.tar.gz (per run: metrics.jsonl, summary.rank<r>.json, run.json, log.txt).
#
# --budget-s S: a run whose predicted time (a built-in guess for a size's first run, then 1.15x the last run of
# that size) does not fit in what is left of S seconds (counted from the script's start) is skipped and listed as
# such; a running run is stopped when S is used up (its steps so far stay in the report, status "timeout").
# Environment: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 are always set
# (NVLink multicast off); OMP_NUM_THREADS = min(16, cores / world) per run. Nothing here touches GPU clocks.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --gpus N          largest world size (default: all visible GPUs; with --device cpu: 1)
  --sizes LIST      size presets in run order (default large,xlarge; also tiny, small, medium)
  --worlds LIST     world sizes in run order, those <= --gpus are run (default 1,2,4,8)
  --warmup SPEC     warm-up steps, e.g. 3 or 3,xlarge=1 (default 3)
  --iters SPEC      timed steps after the warm-up, e.g. 5 or 5,xlarge=3 (default 5)
  --probes N        probes per GPU (default 12)        --batch N     batch rows (default 1024)
  --seq N           --min_seq_len (default 10: T = 11) --task NAME   lm (default) or a synthetic task (copy, ...)
  --dtype NAME      bfloat16 (default) or float32      --device D    cuda (default) or cpu (gloo)
  --budget-s S      time budget of the whole script in seconds (default 0: none)
  --out DIR         where the report, log and raw tarball go (default $OUT, else bench/results)
  --work DIR        raw per-run files in DIR/<size>_w<N>, replaced by each run
                    (default ${TMPDIR:-/tmp}/zo_scaling_<stamp>)
  --ckpt-dir DIR    run <size>_w<N> checkpoints into DIR/<size>_w<N>, deleted after the run (default: a new
                    folder in /dev/shm when it has room for the largest checkpoint, else in ${TMPDIR:-/tmp})
  --dry-run         print the commands and exit
Environment: PYTHON=/path/to/python runs everything with that interpreter (torchrun as
`$PYTHON -m torch.distributed.run`); default python3 and the torchrun on PATH.
EOF
}

ARGV="$0 $*"
# shellcheck source=bench/_launch_common.sh
source bench/_launch_common.sh

GPUS="" SIZES="large,xlarge" WORLDS="1,2,4,8" WARMUP="3" ITERS="5" PROBES=12 BATCH=1024 SEQ=10 TASK=lm
DTYPE=bfloat16 DEVICE=cuda BUDGET=0 OUT_DIR="${OUT:-bench/results}" WORK="" CKPT="" DRY=0 LR=0.01
PY=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS=${2:?}; shift 2 ;;
    --sizes) SIZES=${2:?}; shift 2 ;;
    --worlds) WORLDS=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --iters) ITERS=${2:?}; shift 2 ;;
    --probes) PROBES=${2:?}; shift 2 ;;
    --batch) BATCH=${2:?}; shift 2 ;;
    --seq) SEQ=${2:?}; shift 2 ;;
    --task) TASK=${2:?}; shift 2 ;;
    --dtype) DTYPE=${2:?}; shift 2 ;;
    --device) DEVICE=${2:?}; shift 2 ;;
    --budget-s) BUDGET=${2:?}; shift 2 ;;
    --out) OUT_DIR=${2:?}; shift 2 ;;
    --work) WORK=${2:?}; shift 2 ;;
    --ckpt-dir) CKPT=${2:?}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# size presets (models/config.py SIZE_PRESETS): hidden heads params; guesses for the budget: s/step at 12 probes
# on one H200 (bench/results, bench_step) and the rest of a run (start-up, init, final checkpoint), in seconds
declare -A HID=([tiny]=240 [small]=1600 [medium]=9600 [large]=66000 [xlarge]=297500)
declare -A HEADS=([tiny]=12 [small]=32 [medium]=64 [large]=220 [xlarge]=350)
declare -A PARAMS=([tiny]=150740 [small]=1139700 [medium]=10627700 [large]=112606100 [xlarge]=1162045100)
declare -A STEP_GUESS=([tiny]=0.01 [small]=0.03 [medium]=0.1 [large]=0.4 [xlarge]=3.5)
declare -A REST_GUESS=([tiny]=20 [small]=20 [medium]=20 [large]=25 [xlarge]=40)

is_int "$PROBES" && [[ $PROBES -ge 1 ]] || die "--probes must be a whole number >= 1, got $PROBES"
is_int "$BATCH" && [[ $BATCH -ge 1 ]] || die "--batch must be a whole number >= 1, got $BATCH"
is_int "$SEQ" && [[ $SEQ -ge 2 ]] || die "--seq must be a whole number >= 2, got $SEQ"
is_int "$BUDGET" || die "--budget-s must be a whole number of seconds, got $BUDGET"
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || die "--device must be cuda or cpu, got $DEVICE"
IFS=, read -r -a SIZE_LIST <<<"$SIZES"
for s in "${SIZE_LIST[@]}"; do [[ -n "${HID[$s]:-}" ]] || die "unknown size $s (tiny, small, medium, large, xlarge)"; done

# SPEC "3,xlarge=1": the bare number is the default, size=N overrides it
pick() {
  local spec=$1 size=$2 def="" item
  IFS=, read -r -a items <<<"$spec"
  for item in "${items[@]}"; do
    if [[ "$item" == *=* ]]; then
      [[ "${item%%=*}" == "$size" ]] && { echo "${item#*=}"; return; }
    else
      def=$item
    fi
  done
  echo "$def"
}
for s in "${SIZE_LIST[@]}"; do
  w=$(pick "$WARMUP" "$s"); i=$(pick "$ITERS" "$s")
  is_int "$w" || die "--warmup $WARMUP gives no whole number for $s"
  { is_int "$i" && [[ $i -ge 1 ]]; } || die "--iters $ITERS gives no whole number >= 1 for $s"
done

[[ -n "$GPUS" ]] || GPUS=$(visible_gpus 1) || exit 2
is_int "$GPUS" && [[ $GPUS -ge 1 ]] || die "--gpus must be a whole number >= 1, got $GPUS"
IFS=, read -r -a _w <<<"$WORLDS"
WORLD_LIST=()
for w in "${_w[@]}"; do
  { is_int "$w" && [[ $w -ge 1 ]]; } || die "--worlds: $w is not a whole number >= 1"
  [[ $w -le $GPUS ]] && WORLD_LIST+=("$w")
done
[[ ${#WORLD_LIST[@]} -gt 0 ]] || die "no world size in --worlds $WORLDS is <= --gpus $GPUS"

STAMP=$(date +%Y-%m-%d_%H%M%S)
WORK=${WORK:-${TMPDIR:-/tmp}/zo_scaling_$STAMP}
PREFIX="$OUT_DIR/scaling_$STAMP"
NCPU=$(nproc 2>/dev/null || echo 1)
export_run_env
mapfile -t LAUNCH < <(torchrun_words)

CKPT_AUTO=0
if [[ -z "$CKPT" ]]; then
  CKPT_AUTO=1
  need=0   # the largest final checkpoint (bf16 weights + fp32 master: 6 bytes per parameter; 8 in fp32) + room
  for s in "${SIZE_LIST[@]}"; do n=$(( ${PARAMS[$s]} * 10 + (256 << 20) )); [[ $n -gt $need ]] && need=$n; done
  shm_free=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {printf "%.0f", $4 * 1024}')
  if [[ -n "$shm_free" ]] && [[ "$shm_free" -gt "$need" ]]; then CKPT=/dev/shm/zo_scaling_ck_$STAMP
  else CKPT=${TMPDIR:-/tmp}/zo_scaling_ck_$STAMP; fi
fi

if [[ "$TASK" == lm ]]; then TASK_ARGS=(--task lm --tokenizer char); else TASK_ARGS=(--task "$TASK"); fi

# the command of one run, one word per line (the trainer's flags: see distributed_rge.py --help)
run_cmd() {
  local size=$1 w=$2 steps=$3 dir=$4 ck=$5
  printf '%s\n' "${LAUNCH[@]}" --standalone "--nproc_per_node=$w" distributed_rge.py "${TASK_ARGS[@]}" \
    --mode test --device "$DEVICE" --dtype "$DTYPE" --model_type LSTM \
    --hidden_size "${HID[$size]}" --num_heads "${HEADS[$size]}" --input_size 100 \
    --batch_size "$BATCH" --meta_perturbations "$PROBES" --min_seq_len "$SEQ" --learning_rate "$LR" --seed 0 \
    --max_iters "$steps" --val_iters 1000000 --sync_check_iters 1000000 --verbose true \
    --metrics_out "$dir/metrics.jsonl" --summary_out "$dir/summary.rank{rank}.json" --checkpoint_dir "$ck"
}


if [[ $DRY == 1 ]]; then
  echo "# NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1; report: $PREFIX.md"
  for s in "${SIZE_LIST[@]}"; do
    wu=$(pick "$WARMUP" "$s"); it=$(pick "$ITERS" "$s")
    for w in "${WORLD_LIST[@]}"; do
      echo "# $s, $w GPU(s), $wu warm-up + $it timed steps, $PROBES probes per GPU"
      mapfile -t cmd < <(run_cmd "$s" "$w" $((wu + it)) "$WORK/${s}_w$w" "$CKPT/${s}_w$w")
      echo "OMP_NUM_THREADS=$(omp_threads "$w") ${cmd[*]}"
    done
  done
  echo "$PY bench/scaling_report.py $WORK --out $PREFIX"
  exit 0
fi

mkdir -p "$OUT_DIR" "$WORK" || die "cannot create $OUT_DIR or $WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd); PREFIX="$OUT_DIR/scaling_$STAMP"; WORK=$(cd "$WORK" && pwd)
LOG="$PREFIX.log"
: >"$LOG"
cleanup() { if [[ $CKPT_AUTO == 1 && -d "$CKPT" ]]; then rm -rf -- "$CKPT"; fi; }   # only the folder made here
trap cleanup EXIT
T0=$(date +%s.%N)
say() { echo "$*" | tee -a "$LOG"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }

# what the report needs about this machine and this invocation
machine_info
TORCH_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || echo unknown)
export ZS_STAMP=$STAMP ZS_ARGV="$ARGV" ZS_GPU_INFO="$GPU_INFO" ZS_GIT_COMMIT="$GIT_COMMIT" ZS_GIT_DIRTY="$GIT_DIRTY" \
  ZS_TORCH="$TORCH_VERSION" ZS_NCPU=$NCPU ZS_GPUS=$GPUS ZS_DEVICE=$DEVICE ZS_TASK=$TASK ZS_PROBES=$PROBES \
  ZS_BATCH=$BATCH ZS_SEQ=$SEQ ZS_DTYPE=$DTYPE ZS_BUDGET=$BUDGET ZS_CKPT="$CKPT"
"$PY" - "$WORK/env.json" <<'PY'
import json, os, platform, sys, datetime
e = os.environ
rec = {"stamp": e["ZS_STAMP"], "date": datetime.datetime.now().isoformat(timespec="seconds"),
       "host": platform.node(), "script": e["ZS_ARGV"], "gpu_info": [l.strip() for l in e["ZS_GPU_INFO"].splitlines() if l.strip()],
       "git_commit": e["ZS_GIT_COMMIT"], "git_dirty": e["ZS_GIT_DIRTY"] == "true", "torch": e["ZS_TORCH"],
       "cpus": int(e["ZS_NCPU"]), "max_world": int(e["ZS_GPUS"]), "device": e["ZS_DEVICE"], "task": e["ZS_TASK"],
       "probes_per_gpu": int(e["ZS_PROBES"]), "batch": int(e["ZS_BATCH"]), "min_seq_len": int(e["ZS_SEQ"]),
       "dtype": e["ZS_DTYPE"], "budget_s": float(e["ZS_BUDGET"]), "checkpoint_dir": e["ZS_CKPT"],
       "env": {k: e.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                                     "CUDA_VISIBLE_DEVICES", "NCCL_P2P_DISABLE")}}
json.dump(rec, open(sys.argv[1], "w"), indent=1)
PY

say "== scaling: sizes ${SIZE_LIST[*]}, world sizes ${WORLD_LIST[*]} (of $GPUS), $PROBES probes per GPU, batch $BATCH," \
    "task $TASK, min_seq_len $SEQ, $DTYPE, budget ${BUDGET}s; raw files in $WORK, report $PREFIX.md"
say "   GPUs: ${GPU_INFO:-none visible to nvidia-smi}; commit $GIT_COMMIT (dirty: $GIT_DIRTY); torch $TORCH_VERSION"

report() {
  "$PY" bench/scaling_report.py "$WORK" --out "$PREFIX" >>"$LOG" 2>&1 || say "   (scaling_report.py failed; see $LOG)"
  tar -czf "${PREFIX}_raw.tar.gz" -C "$(dirname "$WORK")" "$(basename "$WORK")" 2>>"$LOG" || true
}

write_run_json() {   # $1: run dir; the rest: key=value pairs (values stay strings unless numeric)
  local dir=$1; shift
  kv_json "$dir/run.json" "$@"
}

if [[ "$TASK" == lm ]]; then   # build the embedded corpus's token cache once, outside the timed runs
  t=$(date +%s.%N)
  "$PY" -m tasks.prepare_lm --seq_length "$SEQ" >>"$LOG" 2>&1 || say "   warning: tasks.prepare_lm failed (see $LOG)"
  say "   corpus cache ready in $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
fi

declare -A LAST_WALL=()
for s in "${SIZE_LIST[@]}"; do
  wu=$(pick "$WARMUP" "$s"); it=$(pick "$ITERS" "$s"); steps=$((wu + it))
  for w in "${WORLD_LIST[@]}"; do
    name="${s}_w$w"; dir="$WORK/$name"; ck="$CKPT/$name"
    rm -rf -- "$dir"; mkdir -p "$dir"
    if [[ -n "${LAST_WALL[$s]:-}" ]]; then pred=$(awk -v x="${LAST_WALL[$s]}" 'BEGIN {printf "%.0f", 1.15 * x}')
    else pred=$(awk -v r="${REST_GUESS[$s]}" -v t="${STEP_GUESS[$s]}" -v n="$steps" 'BEGIN {printf "%.0f", r + n * t}'); fi
    mapfile -t cmd < <(run_cmd "$s" "$w" "$steps" "$dir" "$ck")
    omp=$(omp_threads "$w")
    common=(name="$name" size="$s" world="$w" warmup="$wu" iters="$it" probes_per_gpu="$PROBES" batch="$BATCH"
            params="${PARAMS[$s]}" predicted_s="$pred" omp_threads="$omp" cmd="OMP_NUM_THREADS=$omp ${cmd[*]}")
    tmo=()
    if [[ $BUDGET -gt 0 ]]; then
      left=$(awk -v b="$BUDGET" -v e="$(elapsed)" 'BEGIN {printf "%.0f", b - e}')
      if [[ $pred -gt $left ]]; then
        say "== $name: skipped (predicted ${pred}s, ${left}s of the ${BUDGET}s budget left)"
        write_run_json "$dir" "${common[@]}" status=skipped rc=-1 \
          reason="predicted ${pred} s, ${left} s of the ${BUDGET} s budget left"
        report; continue
      fi
      tmo=(timeout -k 30 "${left}s")
    fi
    say "== $name: $w process(es), $wu warm-up + $it timed steps (predicted ~${pred}s; at $(elapsed)s)"
    echo "\$ OMP_NUM_THREADS=$omp ${cmd[*]}" >>"$LOG"
    t1=$(date +%s.%N)
    OMP_NUM_THREADS=$omp "${tmo[@]}" "${cmd[@]}" 2>&1 | tee "$dir/log.txt" | tee -a "$LOG" \
      | grep --line-buffered -E '^\[Init\]|Iteration|phases|FINISHED|rror|warning|lstm backend|Killed|Traceback'
    rc=${PIPESTATUS[0]}
    t2=$(date +%s.%N)
    wall=$(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.2f", b - a}')
    case $rc in
      0) status=ok ;;
      124|137) status=timeout ;;
      3) status=nonfinite_loss ;;
      4) status=replicas_diverged ;;
      *) status=failed ;;
    esac
    ckb=0 ckm=0 mm=0
    [[ -f "$ck/latest.pt" ]] && ckb=$(stat -c %s "$ck/latest.pt")
    [[ -f "$ck/latest.pt" ]] && ckm=$("$PY" -c 'import os,sys; print(os.path.getmtime(sys.argv[1]))' "$ck/latest.pt")
    [[ -f "$dir/metrics.jsonl" ]] && mm=$("$PY" -c 'import os,sys; print(os.path.getmtime(sys.argv[1]))' "$dir/metrics.jsonl")
    rm -rf -- "$ck"
    write_run_json "$dir" "${common[@]}" status="$status" rc="$rc" wall_s="$wall" start_unix="$t1" end_unix="$t2" \
      checkpoint_bytes="$ckb" checkpoint_mtime="$ckm" metrics_mtime="$mm"
    say "   $name: $status (exit $rc) in ${wall}s"
    [[ $status == ok ]] && LAST_WALL[$s]=$wall
    [[ $status == timeout ]] && LAST_WALL[$s]=100000
    report
  done
done
report
say "== done in $(elapsed)s: $PREFIX.md / .json / .log / _raw.tar.gz"
cat "$PREFIX.md" 2>/dev/null
