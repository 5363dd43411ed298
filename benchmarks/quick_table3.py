"""Wall time of ``kdcicam ablate table3 --backbone vgg16`` from nothing: fresh store, artifacts and data cache.

    python benchmarks/quick_table3.py --profile smoke          # seconds to a few minutes
    python benchmarks/quick_table3.py                          # quick profile, as `kdcicam ablate` runs it (--jobs auto)
    python benchmarks/quick_table3.py --profile medium --epochs 2   # 2 epochs per run, projected to the profile's 12
    python benchmarks/quick_table3.py --seeds 2 --json out.json
    python benchmarks/quick_table3.py --jobs 1              # one run at a time, on every core

Runs the CLI in a subprocess with ``--db``, ``--artifacts`` and ``KDCICAM_CACHE`` pointing into a new
temporary folder, so the synthetic benchmark is generated, every run trained and evaluated, and
nothing is reused. Reports the total wall time, each run's ``train_seconds`` / ``eval_seconds`` from the
store, and the rest (generating the synthetic benchmark, Python start-up, planning, storing results).

``--epochs N`` trains every run for N epochs only (``--set train.epochs=N``) and also prints a
projection to the profile's epochs: each run's training time (which includes its per-epoch
validation) scaled by epochs / N, plus the measured evaluation and other time unchanged (the final
test evaluation covers at most 4 distinct checkpoints either way).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["smoke", "quick", "medium", "paper"], default="quick")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=None, help="train each run this many epochs and project")
    parser.add_argument("--jobs", default="auto", help="kdcicam ablate --jobs N|auto (N runs at once)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary folder")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    import torch

    machine = common.machine(torch.device(args.device) if args.device != "auto" else torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KDCICAM_CACHE": str(work / "cache")}
        env.pop("KDCICAM_DB", None)
        db = work / "runs.db"
        cmd = [sys.executable, "-m", "kdcicam", "ablate", "table3", "--backbone", "vgg16", "--profile", args.profile,
               "--seeds", str(args.seeds), "--device", args.device, "--db", str(db), "--artifacts",
               str(work / "runs"), "--quiet", "--jobs", str(args.jobs)]
        if args.epochs:
            cmd += ["--set", f"train.epochs={args.epochs}"]
        print(f"{machine['device']}, load {machine['loadavg_start']}: {' '.join(cmd[2:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"kdcicam ablate exited with {proc.returncode}")
        from kdcicam.store import open_store

        with open_store(f"sqlite:///{db}", create=False) as store:
            runs = [{"run_id": r.id[:12], "role": r.role, "status": r.status, "train_s": r.train_seconds,
                     "eval_s": r.eval_seconds, "epochs": r.config["train"]["epochs"], "pid": r.pid}
                    for r in store.list_runs()]
    train_total = sum(r["train_s"] or 0.0 for r in runs)
    eval_total = sum(r["eval_s"] or 0.0 for r in runs)
    result = {"benchmark": "quick_table3", "machine": machine, "profile": args.profile, "seeds": args.seeds,
              "jobs": args.jobs, "processes": len({r["pid"] for r in runs}),  # --jobs auto: how many it started
              "wall_s": wall, "train_s": train_total, "eval_s": eval_total,
              "other_s": wall - train_total - eval_total, "runs": runs, "loadavg_end": common.loadavg()}
    # other_s: wall time outside the runs, when one process trained them all (meaningless when runs overlapped)
    side_by_side = result["processes"] > 1
    rest = ("summed over runs that ran side by side" if side_by_side
            else f"{result['other_s']:.1f} s data generation, start-up and storing")
    print(f"table3 / vgg16 / {args.profile}, {args.seeds} seed(s), --jobs {args.jobs} ({result['processes']} "
          f"processes trained): {wall:.1f} s wall ({train_total:.1f} s training, {eval_total:.1f} s evaluation, "
          f"{rest}), {len(runs)} runs; load at end {result['loadavg_end']}")
    for r in runs:
        print(f"  {r['run_id']} {r['role']:<12} {r['status']:<9} {r['epochs']:3d} epochs  "
              f"train {r['train_s'] or 0:7.1f} s  eval {r['eval_s'] or 0:6.1f} s")
    if args.epochs:
        full = {r["role"]: common.run_config(args.profile, r["role"]).train.epochs for r in runs}
        work_s = train_total + eval_total  # summed over runs; with --jobs N some of it ran side by side
        full_s = eval_total + sum((r["train_s"] or 0.0) * full[r["role"]] / r["epochs"] for r in runs)
        # the wall time spent in runs, scaled by how much more run time the full epochs take
        # (with --jobs: assumes the runs overlap as much as they did here)
        in_runs = wall - max(result["other_s"], 0.0) if result["processes"] == 1 else wall
        projected = (wall - in_runs) + in_runs * full_s / max(work_s, 1e-9)
        result["projected_full_s"] = projected
        print(f"projected with the profile's epochs ({sorted(set(full.values()))}): {projected:.0f} s "
              f"({projected / 60:.1f} min)")
    common.dump(result, args.json)


if __name__ == "__main__":
    main()
