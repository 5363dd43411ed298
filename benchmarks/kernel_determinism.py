"""Which CPU settings give bit-identical runs: the same run trained under several kernel settings.

A diagnostic, not a speed figure. Trains one run (``kdcicam train``, default: the smoke profile's
student) in fresh processes under each setting below, each into its own store, and compares every
stored number with the first setting's run (per-epoch training terms and validation scores without
``images_per_s``; every final metric but timings):

- ``native, T threads`` (twice: the repeat shows whether a run is deterministic at all);
- ``native`` at the other thread count;
- ``ATEN_CPU_CAPABILITY=default`` (PyTorch's own kernels without AVX2 / AVX-512: what another CPU
  generation would dispatch to).

The stored device string (``cpu (MODEL, ARCH, CAPABILITY, N threads)``) is printed beside each, so
the result says which parts of it matter on this machine.

    python benchmarks/kernel_determinism.py [--profile smoke] [--role student] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

EPOCHS_SQL = ("select epoch, split, name, value from epoch_metrics where name != 'images_per_s' "
              "order by epoch, split, name")
FINALS_SQL = ("select protocol, selection, threshold_policy, split, name, value from final_metrics "
              "where name not like '%seconds%' order by protocol, selection, threshold_policy, split, name")


def train(workdir: Path, name: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    """Train the run in a fresh process under ``env``; its device string and stored numbers."""
    db = workdir / f"{name}.db"
    cmd = [sys.executable, "-m", "kdcicam", "train", "--profile", args.profile, "--role", args.role,
           "--db", f"sqlite:///{db}", "--artifacts", str(workdir / name), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: kdcicam train failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    con = sqlite3.connect(db)
    try:
        return {"device": con.execute("select device from runs").fetchone()[0],
                "epochs": con.execute(EPOCHS_SQL).fetchall(), "finals": con.execute(FINALS_SQL).fetchall()}
    finally:
        con.close()


def differing(a: list[tuple], b: list[tuple]) -> int:
    """Rows that differ (rows present on one side only count too)."""
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--role", default="student")
    parser.add_argument("--threads", type=int, default=1, help="the reference run's thread count")
    parser.add_argument("--json", type=Path, help="write every comparison here")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KDCICAM_", "ATEN_CPU_CAPABILITY"))}
    other = 2 if args.threads == 1 else 1
    settings = [
        ("native", {"KDCICAM_THREADS": str(args.threads)}),
        ("native, repeated", {"KDCICAM_THREADS": str(args.threads)}),
        (f"native, {other} threads", {"KDCICAM_THREADS": str(other)}),
        ("ATEN_CPU_CAPABILITY=default", {"KDCICAM_THREADS": str(args.threads), "ATEN_CPU_CAPABILITY": "default"}),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernel-determinism-") as tmp:
        workdir = Path(tmp)
        env0 = {**base, "KDCICAM_CACHE": str(workdir / "cache"), "KDCICAM_JOBS": "1"}
        results = [(label, train(workdir, f"run{i}", {**env0, **extra}, args))
                   for i, (label, extra) in enumerate(settings)]
    ref = results[0][1]
    print(f"{args.profile} profile, {args.role}: every stored number compared with the first run's")
    print(f"{'setting':30s} {'device':48s} {'epoch values':>14s} {'final metrics':>14s}")
    for label, res in results:
        ep, fin = differing(ref["epochs"], res["epochs"]), differing(ref["finals"], res["finals"])
        rows.append({"setting": label, "device": res["device"], "epoch_values": len(res["epochs"]),
                     "epoch_values_differing": ep, "final_metrics": len(res["finals"]),
                     "final_metrics_differing": fin})
        ep_text, fin_text = f"{ep} of {len(res['epochs'])} differ", f"{fin} of {len(res['finals'])} differ"
        print(f"{label:30s} {res['device']:48s} {ep_text:>14s} {fin_text:>14s}")
    if args.json:
        args.json.write_text(json.dumps({"profile": args.profile, "role": args.role, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
