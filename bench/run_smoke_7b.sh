#!/usr/bin/env bash
# The paper's smoke test (issue 7): a ~6.9B-parameter LSTM over GPT-2's vocabulary, distributed CD-RGE on all GPUs
# of one node, until the loss on its single batch is below 0.1 (distributed_rge.py --mode test). The paper's line
#     python -m torch.distributed.launch --nproc_per_node=8 distributed_rge.py --tokenizer hf --model_type LSTM
# ran with its script's defaults at the time: hidden 2^17 = 131072 in 2^8 = 256 heads, input 100, batch 1, windows of
# 10 tokens, 12 probes per GPU, plain CD-RGE (no Adam), constant lr 0.01; it printed "Model has 6914405668
# parameters" and reached loss 0.047 in 6 iterations at 19.6 s/iter on 8 A40s. Our trainer's defaults are a tiny CPU
# smoke test, so those sizes are passed explicitly; models.param_count gives 6,914,405,668 for them.
#
#   bash bench/run_smoke_7b.sh --dry-run --gpus 4                 # commands + parameter count + memory estimate
#   bash bench/run_smoke_7b.sh --gpus 4 --budget-s 540 --out "$OUT"
#   bash bench/run_smoke_7b.sh --gpus 8 --launcher launch         # the paper's python -m torch.distributed.launch
#
# Tokenizer, offline: the device machines cannot fetch GPT-2's files, and `--tokenizer hf` takes a local directory
# through --tokenizer_path. The script trains a byte-level BPE of GPT-2's size (50,257 ids, <|endoftext|> one of
# them, as in GPT-2) on the embedded corpus plus the standard library's .py sources (the corpus alone yields ~25.6k
# merges), saves it with save_pretrained under .cache/bpe_vocab50257 (git-ignored; a device call can carry it, or it
# is built there in seconds), and reuses it while it loads. `--tokenizer hf` then adds <bos>, <eos>, <pad> as for
# GPT-2: 50,260 ids, the paper's vocabulary size. Its merges differ from GPT-2's; the model's shape does not.
#
# LSTM backend: torch, the reference path (B = 1 leaves nothing for the fused kernel to win). The fused backend
# would not build its per-token input table here (it would be 49 GiB for this vocabulary): it computes each
# chunk's input gates instead (models/lstm_fused.py, prepare_fused).
# Memory per GPU (every rank holds all of theta): bf16 weights + fp32 master = 6 bytes per parameter, 38.6 GiB;
# models.estimate_memory_bytes (what check_fits compares with 0.9 x the free memory) says 38.8 GiB. The trainer's
# replica checksum (at start-up and after the last step) sums theta in float64 in chunks of 2^26 elements
# (ZOEngine.master_checksum), so it adds about 1 GiB for a moment.
#
# Output under --out (default $OUT, else bench/results), at most 4 files, rewritten when the run ends (an early
# version before it starts): smoke7b_<stamp>.md and .json (per-rank peak memory, s/step, steps to loss < 0.1, final
# loss, checksums equal, start-up and checkpoint times), smoke7b_<stamp>.log (all output), smoke7b_<stamp>_raw.tgz
# (rank 0's metrics.jsonl, every rank's summary, run.json, prepare.json, env.json, nvidia-smi samples, log).
# The final checkpoint (~41.5 GB) goes to /dev/shm when it has room, else ${TMPDIR:-/tmp}, and is deleted after.
# Environment: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1 (NVLink multicast off),
# HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1, OMP_NUM_THREADS = min(16, cores / world). Nothing touches GPU clocks.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --gpus N            world size (default: all visible GPUs; with --device cpu: 1)
  --launcher L        torchrun (default: torchrun --standalone) or launch (python -m torch.distributed.launch)
  --max-iters N       step cap (default 40); --mode test stops earlier, at train loss < 0.1
  --budget-s S        wall-clock budget of the whole script in seconds (default 540); the trainer runs under
                      `timeout` for what is left less 20 s for the report (0: no budget)
  --out DIR           report, log and tarball (default $OUT, else bench/results)
  --dry-run           print the commands (both launchers), the parameter count and the memory estimate; no GPU
  --report RAW        only rebuild the report from a run's raw folder or _raw.tgz, into --out
  --prepare-only      only find or build the tokenizer and the token cache (e.g. here, to carry the folder)
Model and run (defaults: the paper's smoke test):
  --vocab N           tokenizer size before <bos>/<eos>/<pad> are added (default 50257, GPT-2's)
  --hidden N (131072)  --heads N (256)  --input N (100)  --batch N (1)  --seq N (10: --min_seq_len)
  --probes N          probes per GPU (default: the paper's 96 per step split over the GPUs, 96 / N rounded up:
                      12 on 8 GPUs, 24 on 4; with 36 per step the run diverged, bench/results/README.md)
  --lr X              learning rate = epsilon (default 0.01)
  --dtype NAME        bfloat16 (default) or float32   --backend B --lstm_backend (default torch)
  --device D          cuda (default) or cpu (gloo)    --seed N    run seed (default 0)
  --tokenizer-dir D   where the tokenizer is found or built (default .cache/bpe_vocab<vocab>)
  --port P            --master_port of the launch form (default 29501)
  --work DIR          raw files (default ${TMPDIR:-/tmp}/zo_smoke7b_<stamp>)
  --ckpt-dir DIR      the trainer's --checkpoint_dir (default: a new folder in /dev/shm or ${TMPDIR:-/tmp},
                      deleted after the run)
  -- ARGS...          more distributed_rge.py flags, appended to its command line
Environment: PYTHON=/path/to/python runs everything with that interpreter (torchrun as
`$PYTHON -m torch.distributed.run`); default python3 and the torchrun on PATH.
EOF
}

ARGV="$0 $*"
# shellcheck source=bench/_launch_common.sh
source bench/_launch_common.sh

GPUS="" LAUNCHER=torchrun MAX_ITERS=40 BUDGET=540 OUT_DIR="${OUT:-bench/results}" DRY=0
VOCAB=50257 HIDDEN=131072 HEADS=256 INPUT=100 BATCH=1 SEQ=10 PROBES="" LR=0.01 DTYPE=bfloat16 BACKEND=torch
DEVICE=cuda SEED=0 TOKDIR="" PORT=29501 WORK="" CKPT="" REPORT="" PREP_ONLY=0 EXTRA=()
PY=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS=${2:?}; shift 2 ;;
    --launcher) LAUNCHER=${2:?}; shift 2 ;;
    --max-iters) MAX_ITERS=${2:?}; shift 2 ;;
    --budget-s) BUDGET=${2:?}; shift 2 ;;
    --out) OUT_DIR=${2:?}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --vocab) VOCAB=${2:?}; shift 2 ;;
    --hidden) HIDDEN=${2:?}; shift 2 ;;
    --heads) HEADS=${2:?}; shift 2 ;;
    --input) INPUT=${2:?}; shift 2 ;;
    --batch) BATCH=${2:?}; shift 2 ;;
    --seq) SEQ=${2:?}; shift 2 ;;
    --probes) PROBES=${2:?}; shift 2 ;;
    --lr) LR=${2:?}; shift 2 ;;
    --dtype) DTYPE=${2:?}; shift 2 ;;
    --backend) BACKEND=${2:?}; shift 2 ;;
    --device) DEVICE=${2:?}; shift 2 ;;
    --seed) SEED=${2:?}; shift 2 ;;
    --tokenizer-dir) TOKDIR=${2:?}; shift 2 ;;
    --port) PORT=${2:?}; shift 2 ;;
    --work) WORK=${2:?}; shift 2 ;;
    --ckpt-dir) CKPT=${2:?}; shift 2 ;;
    --report) REPORT=${2:?}; shift 2 ;;
    --prepare-only) PREP_ONLY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[[ "$LAUNCHER" == torchrun || "$LAUNCHER" == launch ]] || die "--launcher must be torchrun or launch, got $LAUNCHER"
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || die "--device must be cuda or cpu, got $DEVICE"
[[ "$DTYPE" == bfloat16 || "$DTYPE" == float32 ]] || die "--dtype must be bfloat16 or float32, got $DTYPE"
for v in MAX_ITERS VOCAB HIDDEN HEADS INPUT BATCH SEQ PORT SEED; do
  { is_int "${!v}" && [[ ${!v} -ge 1 || $v == SEED ]]; } || die "--$(tr 'A-Z_' 'a-z-' <<<"$v") must be a whole number >= 1, got ${!v}"
done
is_int "$BUDGET" || die "--budget-s must be a whole number of seconds, got $BUDGET"
[[ $VOCAB -ge 257 ]] || die "--vocab must be >= 257 (256 byte tokens + <|endoftext|>), got $VOCAB"
[[ $SEQ -ge 2 ]] || die "--seq must be >= 2, got $SEQ"
[[ $(( HIDDEN % HEADS )) -eq 0 ]] || die "--hidden $HIDDEN is not divisible by --heads $HEADS"
TOKDIR=${TOKDIR:-.cache/bpe_vocab$VOCAB}
[[ "$TOKDIR" == /* ]] || TOKDIR="$PWD/$TOKDIR"

# Python helper: estimate (no tokenizer), prepare (tokenizer + token cache + estimate), report (files -> md/json)
read -r -d '' HELPER <<'PY'
import datetime, glob, json, os, shutil, statistics, sys, time

GIB = 2 ** 30
EOT = "<|endoftext|>"
ADDED = ("<bos>", "<eos>", "<pad>")    # what --tokenizer hf adds (tasks/tokenizers.py PAPER_SPECIALS)
PAPER = {"params": 6914405668, "steps_to_0.1": 6, "final_loss": 0.0468856617808342, "s_per_step": 19.64,
         "gpus": "8 x A40", "probes_per_step": 96}


def kv(argv):
    out, i = {}, 0
    while i < len(argv):
        out[argv[i].lstrip("-").replace("-", "_")] = argv[i + 1]
        i += 2
    return out


def estimate(a):
    from models import ModelConfig, estimate_memory_bytes, param_count
    V = int(a["vocab"]) + len(ADDED)
    cfg = ModelConfig(model_type="LSTM", vocab_size=V, input_size=int(a["input"]), hidden_size=int(a["hidden"]),
                      num_heads=int(a["heads"]), dtype=a["dtype"], backend=a["backend"])
    P = param_count(cfg)
    b = cfg.dtype_bytes
    N, D, H, I = cfg.num_heads, cfg.hidden_size // cfg.num_heads, cfg.hidden_size, cfg.input_size
    try:
        from models.lstm_fused import step_tiles
        Dk = step_tiles(D)[0]
    except Exception:
        Dk = D
    est = estimate_memory_bytes(cfg, batch_size=int(a["batch"]), time_chunk=64, zo=True, master_bytes=4)
    theta = P * b + P * 4                          # live weights + fp32 master (fp32 runs keep a separate master too)
    largest = min(H * V, 1 << 26)                  # the checksum's float64 chunk (ZOEngine.master_checksum)
    return {"vocab_tokenizer": int(a["vocab"]), "vocab_model": V, "input_size": I, "hidden_size": H, "num_heads": N,
            "head_size": D, "dtype": cfg.dtype, "lstm_backend": cfg.backend, "params": P,
            "params_paper": PAPER["params"], "theta_bytes": theta,
            "check_fits_estimate_bytes": est,
            "checksum_transient_bytes": 2 * 8 * largest,
            "predicted_peak_with_checksum_bytes": theta + 2 * 8 * largest,
            "fused_input_table_bytes": V * N * 4 * Dk * b}


def print_estimate(e):
    g = lambda n: f"{n / GIB:.1f} GiB"
    print(f"# model: LSTM, vocab {e['vocab_model']:,} ({e['vocab_tokenizer']:,} + <bos>, <eos>, <pad>), input "
          f"{e['input_size']}, hidden {e['hidden_size']:,} in {e['num_heads']} heads of {e['head_size']}, "
          f"{e['dtype']}, lstm backend {e['lstm_backend']}")
    same = "the paper's count" if e["params"] == e["params_paper"] else f"the paper printed {e['params_paper']:,}"
    print(f"# parameters (models.param_count): {e['params']:,} ({same})")
    print(f"# memory per GPU, every rank holding theta: weights + fp32 master {g(e['theta_bytes'])}; "
          f"models.estimate_memory_bytes (check_fits's number, compared with 0.9 x free): "
          f"{g(e['check_fits_estimate_bytes'])}")
    print(f"# replica checksum (start-up, end): float64 copies of one 2^26-element chunk for a moment, "
          f"+{g(e['checksum_transient_bytes'])} -> allocator peak ~{g(e['predicted_peak_with_checksum_bytes'])}")
    print(f"# a per-token input table would be {g(e['fused_input_table_bytes'])}: the fused backend computes "
          f"each chunk's input gates instead; this run uses --lstm_backend {e['lstm_backend']}")
    print("# estimate: " + json.dumps(e, sort_keys=True))


# ------------------------------------------------------------------------------------------------ tokenizer
def _train_bpe(texts, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab, min_frequency=1, special_tokens=[EOT], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, tr)
    return tok


def _stdlib_sources():
    import sysconfig
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "dist-packages", "test", "tests", "idlelib",
                                                         "__pycache__"))
        for f in sorted(files):
            if f.endswith(".py"):
                try:
                    with open(os.path.join(d, f), encoding="utf-8") as fh:
                        out.append(fh.read())
                except (OSError, UnicodeDecodeError):
                    pass
    return out


def build_tokenizer(path, vocab):
    """A byte-level BPE of exactly `vocab` ids (<|endoftext|> one of them, as GPT-2's), saved by save_pretrained."""
    from tasks.corpus import load_embedded_corpus
    from transformers import PreTrainedTokenizerFast
    t0 = time.time()
    clean = lambda s: s.replace("<bos>", " ").replace("<eos>", " ").replace("<pad>", " ")
    texts = [clean(d[1]) for d in load_embedded_corpus().documents]
    sources = [f"embedded corpus ({len(texts)} documents, {sum(map(len, texts)):,} chars)"]
    tok = _train_bpe(texts, vocab)
    if tok.get_vocab_size() < vocab:
        extra = [clean(t) for t in _stdlib_sources()]
        texts += extra
        sources.append(f"standard library .py sources ({len(extra)} files, {sum(map(len, extra)):,} chars)")
        tok = _train_bpe(texts, vocab)
    learned = tok.get_vocab_size()
    padded = 0
    if learned < vocab:                      # too little text: unreachable placeholders complete the id range
        d = json.loads(tok.to_str())
        v = d["model"]["vocab"]
        nxt = max(v.values()) + 1
        while len(v) < vocab:
            v[f"<|unused_{padded:05d}|>"] = nxt
            nxt += 1
            padded += 1
        from tokenizers import Tokenizer
        tok = Tokenizer.from_str(json.dumps(d))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                 model_max_length=10 ** 12)
    tmp = f"{path}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp)
    info = {"vocab_size": vocab, "learned": learned, "placeholders": padded, "sources": sources,
            "algorithm": "byte-level BPE (tokenizers BpeTrainer, min_frequency 1), <|endoftext|> as bos/eos/unk",
            "built_s": round(time.time() - t0, 2), "built_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": sys.version.split()[0]}
    with open(os.path.join(tmp, "smoke_tokenizer.json"), "w") as f:
        json.dump(info, f, indent=1)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    os.replace(tmp, path)
    return info


def check_tokenizer(path, vocab):
    """(ok, why): the directory loads as --tokenizer hf --tokenizer_path does, with vocab + 3 ids."""
    from tasks.tokenizers import load_text_tokenizer
    try:
        t = load_text_tokenizer("hf", path=path)
    except Exception as e:
        return False, f"{type(e).__name__}: {str(e)[:300]}", None
    if t.vocab_size != vocab + len(ADDED):
        return False, f"vocab {t.vocab_size}, expected {vocab + len(ADDED)}", None
    s = "Return the sum of the elements; raise ValueError if empty."
    if t.decode(t.encode(s)) != s:
        return False, "encode/decode does not round-trip", None
    return True, "ok", t


def prepare(a):
    t0 = time.time()
    path, vocab = a["tokenizer_dir"], int(a["vocab"])
    ok, why, _ = check_tokenizer(path, vocab) if os.path.isdir(path) else (False, "not there", None)
    built = None
    if not ok:
        print(f"tokenizer: {path}: {why}; building a byte-level BPE of {vocab:,} ids", flush=True)
        built = build_tokenizer(path, vocab)
        ok, why, _ = check_tokenizer(path, vocab)
        if not ok:
            raise SystemExit(f"the tokenizer built in {path} does not load as expected: {why}")
    info_path = os.path.join(path, "smoke_tokenizer.json")
    info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
    print(f"tokenizer: {path}: {'built' if built else 'reused'} ({info.get('learned', '?')} learned ids, "
          f"{info.get('placeholders', '?')} placeholders) in {time.time() - t0:.1f} s", flush=True)
    t1 = time.time()
    from tasks import build_lm_task          # the token cache, built once here and not by every rank
    task = build_lm_task("lm", tokenizer="hf", tokenizer_path=path, seq_length=int(a["seq"]),
                         log=lambda m: print(m, flush=True))
    desc = task.describe()
    print(f"token cache: {desc.get('train_tokens', '?')} training tokens, vocab {task.vocab_size} "
          f"in {time.time() - t1:.1f} s", flush=True)
    est = estimate(a)
    if task.vocab_size != est["vocab_model"]:
        raise SystemExit(f"the task's vocabulary is {task.vocab_size}, expected {est['vocab_model']}")
    rec = {"tokenizer_dir": path, "tokenizer_reused": built is None, "tokenizer": info, "task": desc,
           "estimate": est, "tokenizer_s": round(t1 - t0, 2), "token_cache_s": round(time.time() - t1, 2)}
    with open(a["out_json"], "w") as f:
        json.dump(rec, f, indent=1, default=str)


# ------------------------------------------------------------------------------------------------ report
def _load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def _nvsmi(path):
    """Max memory.used (MiB) per GPU index from `nvidia-smi --query-gpu=index,memory.used,memory.total` samples."""
    peak, total = {}, {}
    try:
        with open(path) as f:
            for line in f:
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 3 and parts[0].isdigit():
                    try:
                        i, used, tot = int(parts[0]), float(parts[1]), float(parts[2])
                    except ValueError:
                        continue
                    peak[i] = max(peak.get(i, 0.0), used)
                    total[i] = tot
    except OSError:
        pass
    return {i: {"max_used_mib": peak[i], "total_mib": total[i]} for i in sorted(peak)}


def report(work, prefix):
    env = _load(os.path.join(work, "env.json"), {})
    prep = _load(os.path.join(work, "prepare.json"), {})
    run = _load(os.path.join(work, "run.json"), {})
    est = prep.get("estimate") or _load(os.path.join(work, "estimate.json"), {})
    steps = _jsonl(os.path.join(work, "metrics.jsonl"))
    sums = []
    for p in sorted(glob.glob(os.path.join(work, "summary.rank*.json"))):
        s = _load(p)
        if isinstance(s, dict):
            sums.append(s)
    sums.sort(key=lambda s: s.get("rank", 0))
    world = int(run.get("world") or env.get("world") or 0)
    target = 0.1
    losses = [r.get("train_loss") for r in steps]
    hit = next((r["step"] for r in steps if isinstance(r.get("train_loss"), (int, float)) and r["train_loss"] < target),
               None)
    times = [r["step_time_s"] for r in steps if isinstance(r.get("step_time_s"), (int, float))]
    steady = times[1:] or times
    phases = {}
    for k in sorted({k for r in steps for k in r if k.endswith("_s") and k not in ("elapsed_s", "step_time_s")}):
        vals = [r[k] for r in steps[1:] or steps if isinstance(r.get(k), (int, float))]
        if vals:
            phases[k] = statistics.median(vals)
    checks = [s.get("checksum_hex") for s in sums]
    if len(sums) == 0:
        equal = None
    else:
        equal = len(set(checks)) == 1 and (world == 0 or len(sums) == world)
    rc = run.get("rc")
    status = run.get("status") or "not run"
    s0 = sums[0] if sums else {}
    ranks = [{"rank": s.get("rank"), "device": s.get("device"), "device_name": s.get("device_name"),
              "peak_gib": round(s["peak_mem_bytes"] / GIB, 3) if isinstance(s.get("peak_mem_bytes"), (int, float))
              else None, "checksum_hex": s.get("checksum_hex"), "s_per_step": s.get("s_per_step"),
              "finished": s.get("finished"), "steps_run": s.get("steps_run")} for s in sums]
    steps_peak = max((r.get("peak_mem_bytes") or 0 for r in steps), default=0)
    res = {
        "what": "the paper's 7B smoke test: distributed_rge.py --tokenizer hf --model_type LSTM, --mode test "
                "(one fixed batch until train loss < 0.1)",
        "date": env.get("date"), "host": env.get("host"), "gpu_info": env.get("gpu_info"),
        "git_commit": env.get("git_commit"), "git_dirty": env.get("git_dirty"), "torch": env.get("torch"),
        "transformers": env.get("transformers"), "tokenizers": env.get("tokenizers"), "script": env.get("script"),
        "launcher": env.get("launcher"), "world": world, "probes_per_gpu": env.get("probes_per_gpu"),
        "probes_per_step": (env.get("probes_per_gpu") or 0) * world or None,
        "command": run.get("cmd"), "status": status, "rc": rc, "reason": run.get("reason"),
        "wall_s": run.get("wall_s"),
        "params": s0.get("params") or est.get("params"), "params_predicted": est.get("params"),
        "vocab_model": est.get("vocab_model"), "estimate": est,
        "tokenizer": prep.get("tokenizer"), "tokenizer_reused": prep.get("tokenizer_reused"),
        "prepare_s": {"tokenizer": prep.get("tokenizer_s"), "token_cache": prep.get("token_cache_s")},
        "target_loss": target, "reached_target": hit is not None, "steps_to_target": hit,
        "steps_recorded": len(steps), "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "best_loss": min((x for x in losses if isinstance(x, (int, float))), default=None),
        "losses": losses,
        "s_per_step_median": statistics.median(steady) if steady else None,
        "s_per_step_mean": statistics.fmean(steady) if steady else None,
        "first_step_s": times[0] if times else None,
        "phases_median_s": phases,
        "peak_gib_steps_rank0": round(steps_peak / GIB, 3) if steps_peak else None,
        "ranks": ranks,
        "device_name": next((x["device_name"] for x in ranks if x.get("device_name")), None)
        or next((l.split(",")[1].strip() for l in env.get("gpu_info") or [] if l.count(",") >= 1), None),
        "peak_gib_max_over_ranks": max((r["peak_gib"] for r in ranks if r["peak_gib"] is not None), default=None),
        "summaries": len(sums), "checksums_equal": equal,
        "startup_s": {k: s0.get(k) for k in ("imports_s", "comm_init_s", "trainer_init_s", "run_s", "process_s")}
        if s0 else {},
        "models_per_pass": s0.get("models_per_pass"), "theta_broadcast_bytes": s0.get("theta_broadcast_bytes"),
        "checkpoint_bytes": run.get("checkpoint_bytes"), "checkpoint_dir": env.get("checkpoint_dir"),
        "nvidia_smi": _nvsmi(os.path.join(work, "nvsmi.csv")),
        "paper": PAPER,
    }
    if steps and isinstance(steps[-1].get("elapsed_s"), (int, float)) and s0.get("run_s") is not None:
        res["final_check_and_checkpoint_s"] = s0["run_s"] - steps[-1]["elapsed_s"]
    with open(prefix + ".json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(prefix + ".md", "w") as f:
        f.write(markdown(res))
    print(f"report: {prefix}.md / .json")


def nbytes(n):
    if not isinstance(n, (int, float)) or n <= 0:
        return "n/a"
    for unit, k in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def markdown(r):
    f = lambda x, d=3: "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))
    g = nbytes
    est = r.get("estimate") or {}
    L = ["# 7B smoke test: distributed CD-RGE, LSTM over GPT-2's vocabulary (issue 7)", ""]
    L.append(f"- date: {r['date']}; GPUs: {', '.join(r['gpu_info'] or []) or 'none listed'}; torch {r['torch']}, "
             f"transformers {r['transformers']}; commit {r['git_commit']} (dirty: {r['git_dirty']})")
    L.append(f"- command ({r['launcher']}, {r['world']} process(es)): `{r['command']}`")
    L.append(f"- status: **{r['status']}** (exit {r['rc']}){'; ' + str(r['reason']) if r.get('reason') else ''}; "
             f"wall {f(r['wall_s'], 1)} s")
    tk = r.get("tokenizer") or {}
    L.append(f"- tokenizer: local byte-level BPE of {tk.get('vocab_size', '?')} ids ({tk.get('learned', '?')} "
             f"learned, {tk.get('placeholders', '?')} placeholders; {'; '.join(tk.get('sources', []))}) + <bos>, "
             f"<eos>, <pad> = model vocabulary {r['vocab_model']}; "
             f"{'reused' if r.get('tokenizer_reused') else 'built'} in {f(r['prepare_s'].get('tokenizer'), 1)} s, "
             f"token cache {f(r['prepare_s'].get('token_cache'), 1)} s")
    L += ["", "| | ours | the paper (README) |", "|---|---|---|"]
    P = r.get("params")
    L.append(f"| parameters | {P:,} | {r['paper']['params']:,} |" if isinstance(P, int) else
             f"| parameters | {P} | {r['paper']['params']:,} |")
    L.append(f"| devices, probes per step | {r['world']} x {r.get('device_name') or '?'}, {r['probes_per_step']} | "
             f"{r['paper']['gpus']}, {r['paper']['probes_per_step']} |")
    L.append(f"| steps to train loss < 0.1 | {r['steps_to_target'] if r['reached_target'] else 'not reached in ' + str(r['steps_recorded']) + ' steps'}"
             f" | {r['paper']['steps_to_0.1']} |")
    L.append(f"| first / final / best train loss | {f(r['first_loss'], 4)} / {f(r['final_loss'], 4)} / "
             f"{f(r['best_loss'], 4)} | 15.95 / {r['paper']['final_loss']:.4f} |")
    L.append(f"| s/step (median after the first; mean) | {f(r['s_per_step_median'])} ({f(r['s_per_step_mean'])}); "
             f"first step {f(r['first_step_s'])} | {r['paper']['s_per_step']} |")
    L.append(f"| peak memory per GPU (allocator) | steps: {f(r['peak_gib_steps_rank0'], 2)} GiB (rank 0); with the "
             f"final replica check: max {f(r['peak_gib_max_over_ranks'], 2)} GiB | |")
    L.append(f"| replica checksums equal | {r['checksums_equal']} ({r['summaries']} of {r['world']} ranks "
             f"reported) | |")
    L += ["", "Per rank (`--summary_out`: allocator peak since the first step, the final replica check and the "
          "checkpoint included; nvidia-smi: the device's max used while the script ran, context included):", "",
          "| rank | device | peak (allocator) | nvidia-smi max | checksum | s/step | finished |",
          "|---|---|---|---|---|---|---|"]
    smi = r.get("nvidia_smi") or {}
    for x in r["ranks"]:
        dev = str(x.get("device") or "")
        idx = int(dev.split(":")[1]) if dev.startswith("cuda:") and dev.split(":")[1].isdigit() else None
        s = smi.get(idx) or smi.get(str(idx)) if idx is not None else None
        sm = f"{s['max_used_mib'] / 1024:.1f} of {s['total_mib'] / 1024:.1f} GiB" if s else "n/a"
        L.append(f"| {x['rank']} | {x.get('device_name')} ({dev}) | {f(x['peak_gib'], 2)} GiB | {sm} | "
                 f"`{x['checksum_hex']}` | {f(x['s_per_step'])} | {x['finished']} |")
    if not r["ranks"]:
        L.append("| (no summaries: the run did not reach its end) | | | | | | |")
    st = r.get("startup_s") or {}
    L += ["", f"Start-up: imports {f(st.get('imports_s'), 1)} s, process group {f(st.get('comm_init_s'), 1)} s, "
          f"trainer init (model, master, theta broadcast, first replica check) {f(st.get('trainer_init_s'), 1)} s; "
          f"final replica check + checkpoint ({g(r.get('checkpoint_bytes'))}) "
          f"{f(r.get('final_check_and_checkpoint_s'), 1)} s; models per pass {r.get('models_per_pass')}.",
          "", "Step phases (median after the first step): " +
          (", ".join(f"{k[:-2]} {v:.3f} s" for k, v in r["phases_median_s"].items()) or "n/a") + ".",
          "", f"Prediction before the run (models.param_count / estimate_memory_bytes): {est.get('params', 0):,} "
          f"parameters; {g(est.get('check_fits_estimate_bytes'))} per GPU (check_fits); allocator peak with the "
          f"float64 replica checksum ~{g(est.get('predicted_peak_with_checksum_bytes'))}.",
          "", "Losses by step: " + ", ".join(f(x, 4) for x in r["losses"]) if r["losses"] else "Losses: none recorded."]
    return "\n".join(L) + "\n"


def main():
    mode, a = sys.argv[1], kv(sys.argv[2:])
    if mode == "estimate":
        print_estimate(estimate(a))
    elif mode == "prepare":
        prepare(a)
    elif mode == "report":
        report(a["work"], a["prefix"])
    else:
        raise SystemExit(f"unknown mode {mode}")


main()
PY

if [[ -n "$REPORT" ]]; then   # rebuild the md/json from a raw folder (or the _raw.tgz holding one)
  src=$REPORT
  if [[ -f "$REPORT" ]]; then
    tmpx=$(mktemp -d) || die "mktemp failed"; trap 'rm -rf -- "$tmpx"' EXIT
    tar -xzf "$REPORT" -C "$tmpx" || die "cannot read $REPORT"
    src=$(find "$tmpx" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  fi
  [[ -d "$src" ]] || die "--report: $REPORT is neither a raw folder nor a _raw.tgz"
  mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
  name=$(basename "$src"); name=${name#zo_smoke7b_}
  "$PY" -c "$HELPER" report --work "$src" --prefix "$OUT_DIR/smoke7b_$name"
  exit $?
fi

if [[ $PREP_ONLY == 1 ]]; then
  tmpj=$(mktemp) || die "mktemp failed"
  "$PY" -c "$HELPER" prepare --vocab "$VOCAB" --hidden "$HIDDEN" --heads "$HEADS" --input "$INPUT" --dtype "$DTYPE" \
    --backend "$BACKEND" --batch "$BATCH" --seq "$SEQ" --tokenizer-dir "$TOKDIR" --out-json "$tmpj" || exit 1
  rm -f -- "$tmpj"
  exit 0
fi

[[ -n "$GPUS" ]] || GPUS=$(visible_gpus 8) || exit 2
{ is_int "$GPUS" && [[ $GPUS -ge 1 ]]; } || die "--gpus must be a whole number >= 1, got $GPUS"
PROBES=${PROBES:-$(( (96 + GPUS - 1) / GPUS ))}     # the paper's 8 x 12 = 96 probes per step
{ is_int "$PROBES" && [[ $PROBES -ge 1 ]]; } || die "--probes must be a whole number >= 1, got $PROBES"

STAMP=$(date +%Y-%m-%d_%H%M%S)
WORK=${WORK:-${TMPDIR:-/tmp}/zo_smoke7b_$STAMP}
PREFIX="$OUT_DIR/smoke7b_$STAMP"
NCPU=$(nproc 2>/dev/null || echo 1)
OMP=$(omp_threads "$GPUS")
export_run_env
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

launcher_words() {   # $1: torchrun or launch
  if [[ "$1" == launch ]]; then
    printf '%s\n' "$PY" -m torch.distributed.launch "--nproc_per_node=$GPUS" "--master_port=$PORT"
  else
    torchrun_words
    printf '%s\n' --standalone "--nproc_per_node=$GPUS"
  fi
}
mapfile -t LAUNCH < <(launcher_words "$LAUNCHER")

# the trainer's command, one word per line (flags: python distributed_rge.py --help)
run_cmd() {
  local dir=$1 ck=$2
  printf '%s\n' "${LAUNCH[@]}" distributed_rge.py --task lm --tokenizer hf --tokenizer_path "$TOKDIR" \
    --model_type LSTM --mode test --device "$DEVICE" --dtype "$DTYPE" --lstm_backend "$BACKEND" \
    --hidden_size "$HIDDEN" --num_heads "$HEADS" --input_size "$INPUT" --batch_size "$BATCH" --min_seq_len "$SEQ" \
    --meta_perturbations "$PROBES" --learning_rate "$LR" --adam false --learn_rate_schedule false --seed "$SEED" \
    --max_iters "$MAX_ITERS" --val_iters 1000000 --sync_check_iters 1000000 --verbose true \
    --metrics_out "$dir/metrics.jsonl" --summary_out "$dir/summary.rank{rank}.json" --checkpoint_dir "$ck" \
    "${EXTRA[@]}"
}


EST_ARGS=(--vocab "$VOCAB" --hidden "$HIDDEN" --heads "$HEADS" --input "$INPUT" --dtype "$DTYPE" --backend "$BACKEND"
          --batch "$BATCH" --seq "$SEQ")

if [[ $DRY == 1 ]]; then
  echo "# NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1; report: $PREFIX.md"
  echo "# the paper's line: python -m torch.distributed.launch --nproc_per_node=8 distributed_rge.py --tokenizer hf --model_type LSTM"
  if [[ -f "$TOKDIR/tokenizer.json" ]]; then echo "# tokenizer: $TOKDIR (present; checked before the run)"
  else echo "# tokenizer: $TOKDIR (absent: built before the run, a few seconds)"; fi
  "$PY" -c "$HELPER" estimate "${EST_ARGS[@]}" || die "the estimate failed"
  echo "# $GPUS GPU(s), $PROBES probes per GPU = $(( GPUS * PROBES )) per step, at most $MAX_ITERS steps"
  mapfile -t cmd < <(run_cmd "$WORK" "${CKPT:-<ckpt-dir>}")
  echo "OMP_NUM_THREADS=$OMP ${cmd[*]}"
  other=launch; [[ "$LAUNCHER" == launch ]] && other=torchrun
  mapfile -t LAUNCH < <(launcher_words "$other")
  mapfile -t cmd < <(run_cmd "$WORK" "${CKPT:-<ckpt-dir>}")
  echo "# the same with --launcher $other:"
  echo "# OMP_NUM_THREADS=$OMP ${cmd[*]}"
  exit 0
fi

mkdir -p "$OUT_DIR" "$WORK" || die "cannot create $OUT_DIR or $WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd); PREFIX="$OUT_DIR/smoke7b_$STAMP"; WORK=$(cd "$WORK" && pwd)
LOG="$PREFIX.log"
: >"$LOG"
T0=$(date +%s.%N)
say() { echo "$*" | tee -a "$LOG"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}'; }
SMI_PID="" CKPT_AUTO=0
cleanup() {
  [[ -n "$SMI_PID" ]] && kill "$SMI_PID" 2>/dev/null
  if [[ $CKPT_AUTO == 1 && -d "$CKPT" ]]; then rm -rf -- "$CKPT"; fi   # only the folder made here
}
trap cleanup EXIT

machine_info
export ZS_STAMP=$STAMP ZS_ARGV="$ARGV" ZS_GPU_INFO="$GPU_INFO" ZS_NCPU=$NCPU ZS_GPUS=$GPUS ZS_DEVICE=$DEVICE \
  ZS_LAUNCHER=$LAUNCHER ZS_PROBES=$PROBES ZS_BUDGET=$BUDGET ZS_GIT_COMMIT="$GIT_COMMIT" ZS_GIT_DIRTY="$GIT_DIRTY"
write_env() {
  ZS_CKPT="$CKPT" "$PY" - "$WORK/env.json" <<'PY'
import datetime, importlib.metadata as m, json, os, platform, sys
e = os.environ
def ver(n):
    try:
        return m.version(n)
    except Exception:
        return None
rec = {"stamp": e["ZS_STAMP"], "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
       "script": e["ZS_ARGV"], "gpu_info": [l.strip() for l in e["ZS_GPU_INFO"].splitlines() if l.strip()],
       "git_commit": e["ZS_GIT_COMMIT"], "git_dirty": e["ZS_GIT_DIRTY"] == "true", "torch": ver("torch"),
       "transformers": ver("transformers"), "tokenizers": ver("tokenizers"), "python": sys.version.split()[0],
       "cpus": int(e["ZS_NCPU"]), "world": int(e["ZS_GPUS"]), "device": e["ZS_DEVICE"], "launcher": e["ZS_LAUNCHER"],
       "probes_per_gpu": int(e["ZS_PROBES"]), "budget_s": float(e["ZS_BUDGET"]), "checkpoint_dir": e.get("ZS_CKPT"),
       "env": {k: e.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                                     "CUDA_VISIBLE_DEVICES", "NCCL_P2P_DISABLE", "PYTORCH_CUDA_ALLOC_CONF")}}
json.dump(rec, open(sys.argv[1], "w"), indent=1)
PY
}
write_run_json() { kv_json "$WORK/run.json" "$@"; }   # key=value pairs (numbers stay numbers)
report() {
  "$PY" -c "$HELPER" report --work "$WORK" --prefix "$PREFIX" >>"$LOG" 2>&1 || say "   (the report failed; see $LOG)"
  tar -czf "${PREFIX}_raw.tgz" -C "$(dirname "$WORK")" "$(basename "$WORK")" 2>>"$LOG" || true
}
write_env

say "== smoke 7B: $GPUS x $DEVICE ($LAUNCHER), LSTM hidden $HIDDEN / $HEADS heads / input $INPUT, vocab $VOCAB+3," \
    "batch $BATCH, seq $SEQ, $PROBES probes per GPU, lr $LR, $DTYPE, backend $BACKEND, at most $MAX_ITERS steps," \
    "budget ${BUDGET}s; raw files in $WORK"
say "   GPUs: ${GPU_INFO:-none visible to nvidia-smi}"

# 1. tokenizer (found or built) + the token cache + the estimate, in one process
t=$(date +%s.%N)
ptmo=(); [[ $BUDGET -gt 0 ]] && ptmo=(timeout -k 10 "$(( BUDGET > 60 ? BUDGET - 30 : 30 ))s")
"${ptmo[@]}" "$PY" -c "$HELPER" prepare "${EST_ARGS[@]}" --tokenizer-dir "$TOKDIR" --out-json "$WORK/prepare.json" \
  2>&1 | tee -a "$LOG" | grep --line-buffered -E '^(tokenizer|token cache)|rror|Traceback'
prc=${PIPESTATUS[0]}
say "   prepared in $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s (exit $prc)"
mapfile -t cmd < <(run_cmd "$WORK" "<ckpt-dir>")
if [[ $prc != 0 ]]; then
  write_run_json status=prepare_failed rc="$prc" world="$GPUS" cmd="OMP_NUM_THREADS=$OMP ${cmd[*]}" \
    reason="tokenizer / token cache step failed (exit $prc), see the log"
  report; say "== prepare failed: $PREFIX.md"; exit 1
fi

# 2. the checkpoint folder: /dev/shm when it has room for the final checkpoint (6 bytes per parameter + 1 GiB)
PARAMS=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["estimate"]["params"])' "$WORK/prepare.json")
if [[ -z "$CKPT" ]]; then
  CKPT_AUTO=1
  need=$(( PARAMS * 6 + (1 << 30) )); [[ "$DTYPE" == float32 ]] && need=$(( PARAMS * 8 + (1 << 30) ))
  shm_free=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {printf "%.0f", $4 * 1024}')
  if [[ -n "$shm_free" ]] && [[ "$shm_free" -gt "$need" ]]; then CKPT=/dev/shm/zo_smoke7b_ck_$STAMP
  else CKPT=${TMPDIR:-/tmp}/zo_smoke7b_ck_$STAMP; fi
fi
write_env
mapfile -t cmd < <(run_cmd "$WORK" "$CKPT")

# 3. the run, under what is left of the budget; nvidia-smi samples memory meanwhile
if [[ "$DEVICE" == cuda ]] && command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits -lms 500 \
    >"$WORK/nvsmi.csv" 2>/dev/null &
  SMI_PID=$!
fi
tmo=()
if [[ $BUDGET -gt 0 ]]; then
  left=$(( BUDGET - $(elapsed) - 20 ))
  if [[ $left -lt 30 ]]; then
    write_run_json status=skipped rc=-1 world="$GPUS" cmd="OMP_NUM_THREADS=$OMP ${cmd[*]}" \
      reason="only ${left} s of the ${BUDGET} s budget left for the run"
    report; say "== skipped: no budget left"; exit 1
  fi
  tmo=(timeout -k 30 "${left}s")
fi
write_run_json status=running rc=-1 world="$GPUS" cmd="OMP_NUM_THREADS=$OMP ${cmd[*]}"
report
say "== run: $GPUS process(es), at most $MAX_ITERS steps (${left:-no} s budget for it; at $(elapsed)s)"
echo "\$ OMP_NUM_THREADS=$OMP ${cmd[*]}" >>"$LOG"
t1=$(date +%s.%N)
OMP_NUM_THREADS=$OMP "${tmo[@]}" "${cmd[@]}" 2>&1 | tee "$WORK/log.txt" | tee -a "$LOG" \
  | grep --line-buffered -E '^\[Init\]|^\[Train\]|FINISHED|rror|warning|lstm backend|Killed|Traceback|OutOfMemory'
rc=${PIPESTATUS[0]}
t2=$(date +%s.%N)
[[ -n "$SMI_PID" ]] && { kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null; SMI_PID=""; }
wall=$(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.2f", b - a}')
case $rc in
  0) status=ok ;;
  124|137) status=timeout ;;
  2) status=usage_error ;;
  3) status=nonfinite_loss ;;
  4) status=replicas_diverged ;;
  5) status=process_group_timeout ;;
  *) status=failed ;;
esac
ckb=0
[[ -f "$CKPT/latest.pt" ]] && ckb=$(stat -c %s "$CKPT/latest.pt")
[[ $CKPT_AUTO == 1 ]] && rm -rf -- "$CKPT"
write_run_json status="$status" rc="$rc" world="$GPUS" wall_s="$wall" start_unix="$t1" end_unix="$t2" \
  checkpoint_bytes="$ckb" cmd="OMP_NUM_THREADS=$OMP ${cmd[*]}"
say "   run: $status (exit $rc) in ${wall}s"
report
say "== done in $(elapsed)s: $PREFIX.md / .json / .log / _raw.tgz"
cat "$PREFIX.md" 2>/dev/null
[[ $rc == 0 ]]
