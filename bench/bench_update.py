"""GPU benchmark of the zo.kernels update and probe kernels against the measured HBM ceiling.

Run on a CUDA machine (never in CI; it exits at once without CUDA):

    python bench/bench_update.py                      # P = 1e8, 1e9; n = 12, 96, 512; M = 2, 8, 24
    python bench/bench_update.py --quick              # P = 1e7 only, a smoke run
    python bench/bench_update.py --out bench/results/update_kernel.md

Before timing it checks, on the same CUDA device, that the kernels reproduce the torch path
(zo.noise.noise_flat and the engine's accumulate / update / stacked-copy formulas) and prints
PASS / FAIL lines. Then it measures:
- the ceiling: a large device-to-device copy (bytes read + written per second);
- the update kernel (read master fp32, write master fp32, write live bf16: 10 bytes per element);
- the seed-element rate: n * P / t. Rademacher noise packs 32 signs per hash word (zo/noise.py),
  so the update hashes once per 32 elements and seed; what remains per element and seed is a
  shift, an and-xor and the fp32 add (~4 SASS instructions, vs ~17 with the previous
  one-word-per-element format, when the kernel was hash-bound from n ~ 3 on: 1.45e12
  seed-elem/s, 25.7% of copy bandwidth at P = 1e9, n = 12). Expected now: ~6e12 seed-elem/s,
  memory-bound at n = 12;
- the apply_probes kernel (read master fp32 once, write M bf16 copies).
Timing: torch.cuda.Event around each launch, warm-up first, median of --reps (>= 10) repetitions.
Writes markdown and JSON (same stem) to --out.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zo import kernels as K  # noqa: E402
from zo import noise as zn  # noqa: E402

TARGET = 0.70  # update kernel: fraction of the copy bandwidth we aim for


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------
def time_ms(fn, reps: int, warmup: int = 2) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), times


def free_bytes() -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


# ------------------------------------------------------------------------------------------------
# correctness on the device (the torch recipe is the reference)
# ------------------------------------------------------------------------------------------------
def verify(dev, gen) -> list[dict]:
    results = []

    def report(name, ok, detail=""):
        results.append({"check": name, "pass": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)

    pid = zn.param_id_from_name("lstm.weight_hh_l0")
    # 0. the device's torch path reproduces the pure-Python reference of the format (rademacher:
    #    bit i & 31 of word(i >> 5)) at word-unaligned starts, word indices >= 2**31 and >= 2**32
    for start, numel in ((3, 70), (2**36 + 2**35 + 5, 70), (2**37 - 35, 70)):
        z = zn.noise_flat(987654321, pid, numel, device=dev, start=start).cpu().tolist()
        ref = [float(zn.rademacher_int(987654321, pid, start + j)) for j in range(numel)]
        bad = sum(a != b for a, b in zip(z, ref))
        report(f"torch rademacher start={start} == Python reference", bad == 0, f"{bad} mismatches")
    # 1. noise == zo.noise.noise_flat computed with torch ops on the same device
    for dist in ("rademacher", "uniform", "normal"):
        for start, numel in ((0, 1_000_003), (2**32 - 4097, 1_000_003), (2**40 + 5, 65_537), (123, 5),
                             (2**36 + 2**35 + 7, 65_537), (2**37 - 4099, 1_000_003)):
            a = K.triton_noise_flat(987654321, pid, numel, dist, device=dev, start=start)
            b = zn.noise_flat(987654321, pid, numel, distribution=dist, device=dev, start=start)
            if dist == "normal":
                err = float(((a - b).abs() / b.abs().clamp_min(1.0)).max())
                report(f"noise {dist} start={start} numel={numel}", err <= 1e-6, f"max rel err {err:.2e} (tol 1e-6)")
            else:
                bad = int((a != b).sum())
                report(f"noise {dist} start={start} numel={numel} bitwise", bad == 0, f"{bad} mismatches")

    # 2. update: g and master vs the engine's torch path on the device
    N = 3_000_017
    n = 24
    seeds = [zn.probe_seed(7, 3, i) for i in range(n)]
    coefs = (torch.randn(n, generator=gen, device=dev) * 0.3).float()
    coefs[5] = 0.0
    cl = coefs.tolist()
    for dist in ("rademacher", "uniform"):
        for wd in (0.0, 0.05):
            master0 = torch.randn(N, generator=gen, device=dev)
            g_ref = torch.zeros(N, device=dev)
            for s, c in zip(seeds, cl):
                if c != 0.0:
                    g_ref.add_(zn.noise_flat(s, pid, N, distribution=dist, device=dev), alpha=c)
            lr = 0.0123
            upd = master0.clone()
            if wd:
                upd = upd * (1.0 - lr * wd)
            upd.add_(g_ref, alpha=-lr)
            live_ref = upd.to(torch.bfloat16)
            m = master0.clone()
            live = torch.empty(N, dtype=torch.bfloat16, device=dev)
            g = torch.empty(N, device=dev)
            K.triton_update(m, seeds, pid, coefs, lr, wd, dist, live, grad_out=g)
            g2 = K.triton_grad(master0, seeds, pid, coefs, dist)
            bad_g = int((g != g_ref).sum()) + int((g2 != g_ref).sum())
            bad_m = int((m != upd).sum())
            bad_l = int((live.view(torch.int16) != live_ref.view(torch.int16)).sum())
            report(f"update {dist} wd={wd}: g bitwise", bad_g == 0, f"{bad_g} mismatches")
            report(f"update {dist} wd={wd}: master bitwise vs upd.add_(g, alpha=-lr)", bad_m == 0,
                   f"{bad_m} mismatches; max |diff| {float((m - upd).abs().max()):.3e}")
            report(f"update {dist} wd={wd}: live bf16 bitwise", bad_l == 0, f"{bad_l} mismatches")

    # 3. dropout + mask (engine's _direction recipe)
    rate = 0.25
    mask = torch.rand(N, generator=gen, device=dev) > 0.1
    g_ref = torch.zeros(N, device=dev)
    for s, c in zip(seeds[:6], cl[:6]):
        z = zn.noise_flat(s, pid, N, device=dev)
        z.mul_(zn.dropout_keep(s, pid, N, rate, device=dev)).mul_(mask)
        g_ref.add_(z, alpha=c)
    g = K.triton_grad(g_ref, seeds[:6], pid, coefs[:6], "rademacher", dropout_rate=rate, mask=mask)
    bad = int((g != g_ref).sum())
    report("grad rademacher + dropout + mask bitwise", bad == 0, f"{bad} mismatches")

    # 4. apply_probes: out[m] = cast(master + c_m z_m), +/- pairs, bf16 and fp32 outputs
    master = torch.randn(N, generator=gen, device=dev)
    ms = [s for s in seeds[:4] for _ in (0, 1)]
    cm = [sg * 0.01 for _ in seeds[:4] for sg in (1.0, -1.0)]
    for dist in ("rademacher", "uniform"):
        for odt in (torch.bfloat16, torch.float32):
            out = torch.empty(len(ms), N, dtype=odt, device=dev)
            K.triton_apply_probes(master, out, ms, pid, cm, dist)
            bad = 0
            for j, (s, c) in enumerate(zip(ms, cm)):
                ref = torch.add(master, zn.noise_flat(s, pid, N, distribution=dist, device=dev), alpha=c).to(odt)
                bad += int((out[j].view(torch.int16 if odt == torch.bfloat16 else torch.int32)
                            != ref.view(torch.int16 if odt == torch.bfloat16 else torch.int32)).sum())
            report(f"apply_probes {dist} -> {str(odt).split('.')[-1]} bitwise", bad == 0, f"{bad} mismatches")
    torch.cuda.synchronize()
    return results


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
def copy_bandwidth(dev, reps, gib: float) -> dict:
    numel = int(gib * 2**30) // 4
    src = torch.empty(numel, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), reps)
    nbytes = 2 * src.numel() * 4
    del src, dst
    return {"bytes": nbytes, "ms": ms, "GBps": nbytes / ms / 1e6}


def bench_update(dev, gen, P, n, reps, copy_gbps, mulhi=None) -> dict:
    master = torch.randn(P, generator=gen, device=dev)
    live = torch.empty(P, dtype=torch.bfloat16, device=dev)
    pid = zn.param_id_from_name("bench.weight")
    seeds = [zn.probe_seed(1, 2, i) for i in range(n)]
    keys = K.noise_keys(seeds, pid, device=dev)
    coefs = (torch.randn(n, generator=gen, device=dev) * 1e-3).float()
    fn = lambda: K.triton_update(master, keys, pid, coefs, 1e-3, 0.0, "rademacher", live, mulhi=mulhi)  # noqa: E731
    ms, times = time_ms(fn, reps)
    nbytes = P * K.update_bytes_per_element(torch.float32, torch.bfloat16)
    gbps = nbytes / ms / 1e6
    del master, live
    return {"P": P, "n": n, "mulhi": K.MULHI if mulhi is None else mulhi, "ms": ms,
            "ms_min": min(times), "ms_max": max(times), "bytes": nbytes, "GBps": gbps,
            "pct_copy": gbps / copy_gbps, "mem_floor_ms": nbytes / copy_gbps / 1e6,
            "Gseed_elems_per_s": n * P / ms / 1e6}


def bench_probes(dev, gen, P, M, reps, copy_gbps) -> dict:
    master = torch.randn(P, generator=gen, device=dev)
    out = torch.empty(M, P, dtype=torch.bfloat16, device=dev)
    pid = zn.param_id_from_name("bench.weight")
    seeds = [zn.probe_seed(1, 2, i) for i in range(max(1, M // 2))]
    ms_seeds = [s for s in seeds for _ in (0, 1)][:M]
    keys = K.noise_keys(ms_seeds, pid, device=dev)
    coefs = [sg * 1e-3 for _ in seeds for sg in (1.0, -1.0)][:M]
    c = torch.tensor(coefs, dtype=torch.float32, device=dev)
    fn = lambda: K.triton_apply_probes(master, out, keys, pid, c, "rademacher")  # noqa: E731
    ms, times = time_ms(fn, reps)
    nbytes = P * 4 + M * P * 2
    gbps = nbytes / ms / 1e6
    del master, out
    return {"P": P, "M": M, "distinct_seeds": len(seeds), "ms": ms, "ms_min": min(times),
            "ms_max": max(times), "bytes": nbytes, "GBps": gbps, "pct_copy": gbps / copy_gbps}


def torch_path_ms(dev, gen, P, n, reps) -> float:
    """The engine's torch path for comparison (materialises each z): g += c z; master -= lr g."""
    master = torch.randn(P, generator=gen, device=dev)
    live = torch.empty(P, dtype=torch.bfloat16, device=dev)
    pid = zn.param_id_from_name("bench.weight")
    seeds = [zn.probe_seed(1, 2, i) for i in range(n)]

    def fn():
        g = torch.zeros(P, device=dev)
        for s in seeds:
            g.add_(zn.noise_flat(s, pid, P, device=dev), alpha=1e-3)
        master.add_(g, alpha=-1e-3)
        live.copy_(master)
    ms, _ = time_ms(fn, max(3, reps // 3), warmup=1)
    del master, live
    return ms


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/update_kernel.md",
                    help="markdown path; the JSON goes next to it with suffix .json")
    ap.add_argument("--sizes", default="1e8,1e9", help="parameter counts P (comma separated)")
    ap.add_argument("--seeds", default="12,96,512", help="seed counts n for the update kernel")
    ap.add_argument("--models", default="2,8,24", help="stacked model counts M for apply_probes")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--copy-gib", type=float, default=8.0, help="size of each copy buffer")
    ap.add_argument("--mulhi-sweep", default="0,1,2,3",
                    help="MULHI variants timed at the smallest P and middle n ('' to skip)")
    ap.add_argument("--quick", action="store_true", help="P = 1e7, n = 12,96; M = 2,8; 10 reps")
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--torch-path", action="store_true", help="also time the engine's torch path at small P")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_update: CUDA is not available; this benchmark runs on a GPU machine only.")
        return 2
    if args.quick:
        args.sizes, args.seeds, args.models, args.copy_gib = "1e7", "12,96", "2,8", 2.0
    args.reps = max(10, args.reps)
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(1234)  # never the global RNG
    import triton
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(dev),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "kernel_defaults": {"UPDATE_BLOCK": K.UPDATE_BLOCK, "UPDATE_WARPS": K.UPDATE_WARPS,
                            "PROBE_BLOCK": K.PROBE_BLOCK, "PROBE_WARPS": K.PROBE_WARPS, "MULHI": K.MULHI},
        "noise_format": "rademacher: 32 signs per hash word (1/32 hash per element-seed)",
        "reps": args.reps,
    }
    print(json.dumps(meta, indent=1), flush=True)

    checks = [] if args.skip_verify else verify(dev, gen)
    all_pass = all(c["pass"] for c in checks)

    cp = copy_bandwidth(dev, args.reps, args.copy_gib)
    print(f"copy: {cp['GBps']:.0f} GB/s ({cp['bytes'] / 2**30:.1f} GiB moved in {cp['ms']:.3f} ms)", flush=True)
    copy_gbps = cp["GBps"]

    sizes = [int(float(x)) for x in args.sizes.split(",") if x]
    seeds_list = [int(x) for x in args.seeds.split(",") if x]
    models = [int(x) for x in args.models.split(",") if x]

    sweep = []
    if args.mulhi_sweep:
        P0 = min(sizes)
        n0 = seeds_list[len(seeds_list) // 2]
        for mh in [int(x) for x in args.mulhi_sweep.split(",")]:
            r = bench_update(dev, gen, P0, n0, args.reps, copy_gbps, mulhi=mh)
            sweep.append(r)
            print(f"mulhi={mh}: P={P0:.0e} n={n0}: {r['ms']:.3f} ms, {r['Gseed_elems_per_s']:.0f} G seed-elem/s",
                  flush=True)
    best_mulhi = min(sweep, key=lambda r: r["ms"])["mulhi"] if sweep else None

    upd_rows, skipped = [], []
    for P in sizes:
        for n in seeds_list:
            need = P * 6 + (64 << 20)
            if free_bytes() < need:
                skipped.append(f"update P={P:.0e}: needs {need / 2**30:.1f} GiB")
                continue
            r = bench_update(dev, gen, P, n, args.reps, copy_gbps, mulhi=best_mulhi)
            upd_rows.append(r)
            print(f"update P={P:.0e} n={n}: {r['ms']:.3f} ms {r['GBps']:.0f} GB/s "
                  f"{100 * r['pct_copy']:.1f}% of copy; {r['Gseed_elems_per_s']:.0f} G seed-elem/s", flush=True)
    hash_ceiling = max((r["Gseed_elems_per_s"] for r in upd_rows), default=float("nan"))
    for r in upd_rows:
        r["hash_floor_ms"] = r["n"] * r["P"] / hash_ceiling / 1e6
        r["pct_of_floor"] = max(r["mem_floor_ms"], r["hash_floor_ms"]) / r["ms"]

    probe_rows = []
    for P in sizes:
        for M in models:
            need = P * 4 + M * P * 2 + (64 << 20)
            if free_bytes() < need:
                skipped.append(f"apply_probes P={P:.0e} M={M}: needs {need / 2**30:.1f} GiB")
                continue
            r = bench_probes(dev, gen, P, M, args.reps, copy_gbps)
            probe_rows.append(r)
            print(f"apply_probes P={P:.0e} M={M}: {r['ms']:.3f} ms {r['GBps']:.0f} GB/s "
                  f"{100 * r['pct_copy']:.1f}% of copy", flush=True)

    torch_rows = []
    if args.torch_path:
        P = min(sizes)
        for n in seeds_list[:2]:
            ms = torch_path_ms(dev, gen, P, n, args.reps)
            torch_rows.append({"P": P, "n": n, "ms": ms})
            print(f"torch path P={P:.0e} n={n}: {ms:.2f} ms", flush=True)

    # ---------------------------------------------------------------- report
    L = [f"# zo.kernels update / probe kernels on {meta['gpu']}", "",
         f"- date: {meta['date']}", f"- torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}",
         f"- command: `{meta['command']}`",
         f"- timing: torch.cuda.Event, 2 warm-up calls, median of {args.reps} reps",
         f"- kernel defaults: {meta['kernel_defaults']}",
         f"- noise format: {meta['noise_format']}", "",
         "## Correctness on the device (kernel vs torch path)", ""]
    L += [f"- {'PASS' if c['pass'] else 'FAIL'} {c['check']} ({c['detail']})" for c in checks] or ["- skipped"]
    L += ["", "## Ceiling: device-to-device copy", "",
          f"{cp['GBps']:.0f} GB/s (bytes read + written; {cp['bytes'] / 2**30:.1f} GiB in {cp['ms']:.3f} ms)", ""]
    if sweep:
        L += ["## MULHI variants (shifts done as umulhi on the multiply pipe)", "",
              "| MULHI | P | n | ms | G seed-elem/s |", "|---|---|---|---|---|"]
        L += [f"| {r['mulhi']} | {r['P']:.0e} | {r['n']} | {r['ms']:.3f} | {r['Gseed_elems_per_s']:.0f} |" for r in sweep]
        L += ["", f"Used for the table below: MULHI={best_mulhi}.", ""]
    L += ["## Update kernel (rademacher; read master fp32 + write master fp32 + write live bf16 = 10 B/elem)", "",
          f"Target: >= {TARGET:.0%} of copy bandwidth. Compute floor = n*P / best measured seed-element rate "
          "(one hash per 32 elements and seed, plus ~3 instructions per element and seed); "
          "'% of floor' = max(memory floor, compute floor) / time.", "",
          "| P | n | time ms | GB/s | % of copy | target >= 70% | G seed-elem/s | mem floor ms | compute floor ms | % of floor |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in upd_rows:
        L.append(f"| {r['P']:.0e} | {r['n']} | {r['ms']:.3f} | {r['GBps']:.0f} | {100 * r['pct_copy']:.1f}% | "
                 f"{'yes' if r['pct_copy'] >= TARGET else 'no'} | {r['Gseed_elems_per_s']:.0f} | "
                 f"{r['mem_floor_ms']:.3f} | {r['hash_floor_ms']:.3f} | {100 * r['pct_of_floor']:.0f}% |")
    L += ["", "## apply_probes kernel (rademacher, fp32 master -> M bf16 copies, +/- pairs share a seed)", "",
          "| P | M | time ms | GB/s | % of copy |", "|---|---|---|---|---|"]
    L += [f"| {r['P']:.0e} | {r['M']} | {r['ms']:.3f} | {r['GBps']:.0f} | {100 * r['pct_copy']:.1f}% |" for r in probe_rows]
    if torch_rows:
        L += ["", "## Engine torch path (materialised z), for comparison", "", "| P | n | ms |", "|---|---|---|"]
        L += [f"| {r['P']:.0e} | {r['n']} | {r['ms']:.2f} |" for r in torch_rows]
    if skipped:
        L += ["", "Skipped (memory): " + "; ".join(skipped)]
    L.append("")
    md = "\n".join(L)
    print(md)

    out = Path(args.out)
    if out.suffix != ".md":
        out = out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "checks": checks, "copy": cp, "mulhi_sweep": sweep, "update": upd_rows,
         "apply_probes": probe_rows, "torch_path": torch_rows, "skipped": skipped,
         "hash_ceiling_Gseed_elems_per_s": None if math.isnan(hash_ceiling) else hash_ceiling},
        indent=1, default=str))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
