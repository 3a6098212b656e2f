"""Scaling report of bench/run_scaling.sh: one markdown table and a JSON file from its per-run files.

    python bench/scaling_report.py /tmp/zo_scaling_<stamp> --out bench/results/scaling_<stamp>
    python bench/scaling_report.py bench/results/scaling_<stamp>_raw.tar.gz --out /tmp/again

Input: a directory (or the script's _raw.tar.gz) holding env.json and, per run, a folder with run.json (written by
the script: size, world, warm-up/timed steps, command, exit status, wall time), metrics.jsonl (rank 0's JSON line
per step, from distributed_rge.py --metrics_out) and summary.rank<r>.json (every rank's end-of-run summary, from
--summary_out). Writes PREFIX.md and PREFIX.json. Needs no torch.

Definitions (stated in the output too): T_N is the median seconds per step over the timed steps (those after the
warm-up) of the run on N GPUs, at a fixed number of probes per GPU (weak scaling: N GPUs evaluate N times the
probes per step). Throughput = probes per step / T_N. Speed-up = N * T_1 / T_N (issue 7's "efficiency": the
throughput of N GPUs over that of one; ideal N). Parallel efficiency = T_1 / T_N (ideal 1).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tarfile
import tempfile

SIZE_ORDER = ("tiny", "small", "medium", "large", "xlarge", "xxlarge")
GIB = 2 ** 30

DEFINITIONS = (
    "T_N = median seconds per step over the timed steps (after the warm-up) with N GPUs, at a fixed number of "
    "probes per GPU (weak scaling: N GPUs evaluate N times the probes per step). Throughput = probes per step / T_N. "
    "**Speed-up N·T₁/T_N** is issue 7's \"efficiency\": the probe throughput of N GPUs over that of one GPU "
    "(ideal N). **Parallel efficiency T₁/T_N** is the same number divided by N (ideal 1.00).")


# ---------------------------------------------------------------------------------------------- reading
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_jsonl(path: str) -> list[dict]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        break          # a line cut short by a killed run: keep what came before
    except OSError:
        pass
    return out


def load_runs(root: str) -> tuple[dict, list[dict]]:
    """env.json and every run under `root` (searched recursively): [{run, records, summaries}]."""
    env, runs = {}, []
    for d, _, files in sorted(os.walk(root)):
        if "env.json" in files and not env:
            env = _read_json(os.path.join(d, "env.json")) or {}
        if "run.json" not in files:
            continue
        run = _read_json(os.path.join(d, "run.json")) or {}
        summaries = {}
        for f in files:
            if f.startswith("summary.rank") and f.endswith(".json"):
                s = _read_json(os.path.join(d, f))
                if s is not None:
                    summaries[int(s.get("rank", f[len("summary.rank"):-len(".json")]))] = s
        runs.append({"dir": d, "run": run, "records": _read_jsonl(os.path.join(d, "metrics.jsonl")),
                     "summaries": [summaries[r] for r in sorted(summaries)],
                     "backend": _backend_line(os.path.join(d, "log.txt"))})
    return env, runs


def _backend_line(path: str) -> str | None:
    """The LSTM backend the run's first rank chose, from its '[lstm backend] auto -> ...' line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "[lstm backend]" in line:
                    return line.split("[lstm backend]", 1)[1].strip()
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------- numbers
def _median(xs):
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def checksum_verdict(world: int, summaries: list[dict], status: str) -> tuple[str, bool | None]:
    """(text, equal): equal is True/False when decided, None when the summaries cannot decide it."""
    if status == "replicas_diverged":
        return "NO (replicas diverged: exit 4)", False
    if status == "skipped":
        return "n/a (not run)", None
    keys = [s.get("checksum_hex") or repr(s.get("checksum")) for s in summaries]
    if len(set(keys)) > 1:
        return f"NO ({len(set(keys))} different values over {len(keys)} ranks)", False
    if len(keys) < world:
        return f"not confirmed ({len(keys)} of {world} rank summaries)", None
    return ("yes (1 rank)" if world == 1 else f"yes ({world} ranks)"), True


def analyse_run(r: dict) -> dict:
    run, recs, sums = r["run"], r["records"], r["summaries"]
    world = int(run.get("world", recs[0]["world_size"] if recs else 1))
    warm = int(run.get("warmup", 0))
    status = run.get("status", "unknown")
    timed = [x for x in recs if x.get("step", -1) >= warm]
    t = _median([x.get("step_time_s") for x in timed])
    per_gpu = run.get("probes_per_gpu")
    n_total = recs[-1].get("n_total") if recs else (per_gpu * world if per_gpu else None)
    phases = {k: _median([x.get(k) for x in timed])
              for k in ("batch_s", "probe_eval_s", "all_gather_s", "sync_wait_s", "update_s", "update_device_s",
                        "sync_check_s")}
    text, equal = checksum_verdict(world, sums, status)
    s0 = sums[0] if sums else {}
    last_elapsed = recs[-1].get("elapsed_s") if recs else None
    run_s = s0.get("run_s")
    proc = max((s.get("process_s") or 0.0) for s in sums) if sums else None
    row = {
        "size": run.get("size"), "world": world, "params": s0.get("params", run.get("params")),
        "status": status, "rc": run.get("rc"), "reason": run.get("reason"),
        "warmup": warm, "iters": run.get("iters"), "steps_recorded": len(recs), "steps_timed": len(timed),
        "probes_per_gpu": per_gpu, "probes_total": n_total,
        "s_per_step": t, "probes_per_s": (n_total / t) if (t and n_total) else None,
        "bytes_per_step": _median([x.get("bytes_communicated") for x in timed]),
        "bytes_sent_per_step": _median([x.get("bytes_sent") for x in timed]),
        "checksums_equal": equal, "checksums": text,
        "checksum_values": [s.get("checksum_hex") for s in sums],
        "peak_gib_steps_rank0": (max(x.get("peak_mem_bytes", 0) for x in recs) / GIB) if recs else None,
        "peak_gib_max_over_ranks_incl_final_check": (max(s.get("peak_mem_bytes", 0) for s in sums) / GIB
                                                     if sums else None),
        "device_name": s0.get("device_name"), "lstm_backend": r.get("backend"),
        "models_per_pass": s0.get("models_per_pass"), "theta_broadcast_bytes": s0.get("theta_broadcast_bytes"),
        "phases_median_s": phases,
        "startup_s": {"imports": s0.get("imports_s"), "comm_init": s0.get("comm_init_s"),
                      "trainer_init": s0.get("trainer_init_s")},
        "final_check_and_checkpoint_s": (run_s - last_elapsed) if (run_s is not None and last_elapsed is not None)
        else None,
        "checkpoint_bytes": run.get("checkpoint_bytes"),
        "process_s": proc, "wall_s": run.get("wall_s"), "predicted_s": run.get("predicted_s"),
        "cmd": run.get("cmd"),
    }
    return row


def add_scaling(rows: list[dict]) -> None:
    """speedup = N * T_1 / T_N and efficiency = T_1 / T_N against the 1-GPU row of the same size and probes/GPU."""
    base = {(r["size"], r["probes_per_gpu"]): r["s_per_step"] for r in rows if r["world"] == 1 and r["s_per_step"]}
    for r in rows:
        t1 = base.get((r["size"], r["probes_per_gpu"]))
        ok = t1 is not None and r["s_per_step"]
        r["t1_s"] = t1
        r["speedup"] = r["world"] * t1 / r["s_per_step"] if ok else None
        r["efficiency"] = t1 / r["s_per_step"] if ok else None


def build(root: str) -> dict:
    env, runs = load_runs(root)
    rows = [analyse_run(r) for r in runs]
    rank = {s: i for i, s in enumerate(SIZE_ORDER)}
    rows.sort(key=lambda r: (rank.get(r["size"], len(SIZE_ORDER)), str(r["size"]), r["world"]))
    add_scaling(rows)
    return {"env": env, "definitions": DEFINITIONS, "rows": rows}


# ---------------------------------------------------------------------------------------------- writing
def _f(x, fmt="{:.3f}", none="n/a"):
    return none if x is None else fmt.format(x)


def _secs(x):
    if x is None:
        return "n/a"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s"


def _gpus(env: dict, rows: list[dict]) -> str:
    info = env.get("gpu_info") or []
    names = [p.split(",")[1].strip() for p in info if len(p.split(",")) > 1]
    if names:
        uniq = sorted(set(names))
        extra = ""
        parts = info[0].split(",")
        if len(parts) > 3:
            extra = f" ({parts[2].strip()} each, driver {parts[3].strip()})"
        return f"{len(names)} x {' / '.join(uniq)}{extra}"
    dev = next((r["device_name"] for r in rows if r.get("device_name")), None)
    return dev or "unknown"


def _where(r: dict) -> str:
    return f"{r['size']} on {r['world']} GPU(s)"


def to_markdown(rep: dict) -> str:
    env, rows = rep["env"], rep["rows"]
    L = ["# Distributed CD-RGE throughput scaling (issue 7)", ""]
    L.append(f"- date: {env.get('date', 'unknown')}; GPUs: {_gpus(env, rows)}; torch {env.get('torch', '?')}; "
             f"{env.get('cpus', '?')} CPU cores")
    commit = env.get("git_commit", "unknown")
    L.append(f"- commit: {commit}{' (with uncommitted changes)' if env.get('git_dirty') else ''}")
    L.append(f"- script: `{env.get('script', 'bench/run_scaling.sh')}`")
    if env:
        task = env.get("task", "lm")
        shape = (f"<bos> + {env.get('min_seq_len')} tokens of the embedded corpus (T = {env.get('min_seq_len', 0) + 1}), "
                 "char vocabulary of 100 ids" if task == "lm" else f"task {task}, min_seq_len {env.get('min_seq_len')}")
        L.append(f"- shapes: LSTM, batch {env.get('batch')}, {shape}, input 100, {env.get('dtype')} weights "
                 f"(fp32 master), {env.get('probes_per_gpu')} probes per GPU (CD-RGE: two forwards per probe), "
                 f"--mode test (one fixed batch); NCCL_NVLS_ENABLE={env.get('env', {}).get('NCCL_NVLS_ENABLE')}, "
                 f"TORCH_SYMM_MEM_DISABLE_MULTICAST={env.get('env', {}).get('TORCH_SYMM_MEM_DISABLE_MULTICAST')}")
    L += ["", "Definitions: " + rep["definitions"], ""]
    L.append("| size | params | GPUs | probes/step | s/step (T_N) | probes/s | speed-up N·T₁/T_N | efficiency T₁/T_N "
             "| bytes/step (rank 0: sent + received) | checksums equal | peak GiB/GPU (steps, rank 0) | status |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        params = f"{r['params']:,}" if isinstance(r["params"], int) else "n/a"
        st = r["status"] if r["status"] == "ok" else f"{r['status']} (exit {r['rc']})"
        if r["status"] == "skipped":
            st = f"skipped: {r.get('reason')}"
        if r["steps_timed"] < (r["iters"] or 0) and r["status"] != "skipped":
            st += f", {r['steps_timed']} of {r['iters']} timed steps"
        byt = "n/a" if r["bytes_per_step"] is None else (f"{r['bytes_per_step']:.0f} (sent {r['bytes_sent_per_step']:.0f})")
        L.append(f"| {r['size']} | {params} | {r['world']} | {r['probes_total'] if r['probes_total'] else 'n/a'} "
                 f"| {_secs(r['s_per_step'])} | {_f(r['probes_per_s'], '{:.1f}')} "
                 f"| {_f(r['speedup'], '{:.3f}x')} | {_f(r['efficiency'], '{:.3f}')} | {byt} | {r['checksums']} "
                 f"| {_f(r['peak_gib_steps_rank0'], '{:.2f}')} | {st} |")
    L += ["", "Where a step's time goes (medians over the timed steps, rank 0) and what a run costs besides its steps:",
          "",
          ("| size | GPUs | models/pass | probe eval (launch) | all-gather | GPU wait at the sync | update | batch "
           "| imports | process group | trainer init | final check + checkpoint (size) | run wall "
           "| peak GiB, max over ranks, incl. final check |"),
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "skipped":
            continue
        ph, su = r["phases_median_s"], r["startup_s"]
        ck = r["final_check_and_checkpoint_s"]
        ckb = r.get("checkpoint_bytes")
        ckt = _secs(ck) + (f" ({ckb / GIB:.2f} GiB)" if isinstance(ckb, (int, float)) and ckb else "")
        L.append(f"| {r['size']} | {r['world']} | {r.get('models_per_pass') or 'n/a'} | {_secs(ph['probe_eval_s'])} "
                 f"| {_secs(ph['all_gather_s'])} | {_secs(ph.get('sync_wait_s'))} "
                 f"| {_secs(ph['update_s'])} | {_secs(ph['batch_s'])} | {_secs(su['imports'])} "
                 f"| {_secs(su['comm_init'])} | {_secs(su['trainer_init'])} | {ckt} | {_secs(r['wall_s'])} "
                 f"| {_f(r['peak_gib_max_over_ranks_incl_final_check'], '{:.2f}')} |")
    L += ["", "Notes:",
          ("- bytes/step is rank 0's logical payload per step (what it contributes to the all-gather of the "
           "[probes, 2] loss table plus what it receives), from the JSON lines; every rank moves the same amount. "
           "θ itself is broadcast once at start-up and never reduced."),
          ("- checksums: every rank's float64 θ checksum after the trainer's end-of-run replica check "
           "(distributed_rge.py --summary_out); \"yes\" means all ranks' values are bitwise equal."),
          ("- peak GiB/GPU (steps): the CUDA allocator peak over the steps on rank 0; the second table's peak also "
           "covers the final replica check and the checkpoint."),
          ("- run wall: torchrun start to exit (interpreter start-up, imports, process group, model init, steps, "
           "final check, checkpoint write, teardown). trainer init: task, model init, engine, θ broadcast, first "
           "replica check.")]
    backends = sorted({f"{r['size']}: {r['lstm_backend']}" for r in rows if r.get("lstm_backend")})
    if backends:
        L.append("- LSTM backend: " + "; ".join(backends) + ".")
    skipped = [r for r in rows if r["status"] == "skipped"]
    if skipped:
        L.append("- skipped for the time budget: " + ", ".join(_where(r) for r in skipped) + ".")
    bad = [r for r in rows if r["checksums_equal"] is False]
    if bad:
        L.append("- **replica checksums differ** in: " + ", ".join(_where(r) for r in bad) + ".")
    L += ["", "Commands:", "", "```"]
    L += [r["cmd"] for r in rows if r.get("cmd")]
    L += ["```", ""]
    return "\n".join(L)


def write(rep: dict, prefix: str) -> tuple[str, str]:
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    md, js = prefix + ".md", prefix + ".json"
    for path, text in ((md, to_markdown(rep)), (js, json.dumps(rep, indent=1))):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return md, js


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", help="the script's work directory, or its _raw.tar.gz")
    p.add_argument("--out", required=True, help="writes OUT.md and OUT.json")
    p.add_argument("--quiet", action="store_true", help="do not print the markdown")
    args = p.parse_args(argv)
    if not os.path.exists(args.raw):
        print(f"error: {args.raw} does not exist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        root = args.raw
        if os.path.isfile(root):
            with tarfile.open(root) as t:
                t.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(tmp)
            root = tmp
        rep = build(root)
    if not rep["rows"]:
        print(f"error: no run.json under {args.raw}", file=sys.stderr)
        return 2
    md, js = write(rep, args.out)
    if not args.quiet:
        print(to_markdown(rep))
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
