"""Wall and CPU time of the CLI's start-up and read commands, each in a fresh process.

A store with two finished runs (no per-image work worth timing) is written to a temporary folder;
``kdcicam --help``, ``runs list``, ``claims``, ``compare`` and ``report -f md`` are each run
``--repeats`` times from a neutral working directory, and the median wall and CPU (user + sys)
seconds are printed, with whether the command imported torch.

    python benchmarks/cli_startup.py [--repeats 5] [--code DIR]

``--code DIR``: time the kdcicam package under DIR (e.g. an older checkout exported with
``git archive``) instead of the installed one.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_RUN = ("import sys; from kdcicam.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)")


def _store(folder: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from _stored import add_finished_run

    from kdcicam.store import open_store

    url = f"sqlite:///{folder / 'runs.db'}"
    with open_store(url) as store:
        for run_id, cell in (("aaaa0000", "base"), ("bbbb0000", "conpool")):
            add_finished_run(store, run_id, "table3", cell, 0,
                             {"top1_cls": 0.5, "top1_loc": 0.3, "gt_known_loc": 0.4}, correct=[1, 0, 1, 1])
    return url


def _time(args: list[str], env: dict[str, str], cwd: str) -> tuple[float, float, bool]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _RUN, *args], env=env, cwd=cwd, capture_output=True, text=True,
                         check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stderr.strip().splitlines()[-1:] == ["True"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--code", type=Path, default=None, help="folder holding the kdcicam package to time")
    opts = parser.parse_args()
    env = dict(os.environ)
    if opts.code is not None:
        env["PYTHONPATH"] = str(opts.code.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        url = _store(Path(tmp))
        commands = [["--help"], ["runs", "list", "--db", url], ["claims", "--db", url],
                    ["compare", "aaaa0000", "bbbb0000", "--db", url], ["report", "-f", "md", "--db", url]]
        print(f"load average at start: {os.getloadavg()[0]:.1f}")
        print(f"{'command':<24} {'wall s':>8} {'cpu s':>8}  torch")
        for args in commands:
            times = [_time(args, env, tmp) for _ in range(opts.repeats)]
            name = " ".join(a for a in args if not a.startswith("sqlite") and a != "--db")
            print(f"{name:<24} {statistics.median(t[0] for t in times):8.2f} "
                  f"{statistics.median(t[1] for t in times):8.2f}  {'yes' if times[0][2] else 'no'}")
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
