"""Start-up of the CLI: ``--help`` loads neither torch nor the store's libraries, and the read commands
(``runs list``, ``claims``, ``compare``, ``report``) run without importing torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from _stored import add_finished_run

from kdcicam.store import open_store

_PROBE = textwrap.dedent("""
    import sys
    from kdcicam.cli import main

    def run(*args):
        try:
            main(list(args))
        except SystemExit:
            pass
        return sorted(m for m in ("torch", "pandas", "sqlalchemy") if m in sys.modules)

    db = sys.argv[1]
    print("help", run("--help"))
    print("runs", run("runs", "list", "--db", db))
    print("claims", run("claims", "--db", db))
    print("compare", run("compare", "aaaa0000", "bbbb0000", "--db", db))
    print("report", run("report", "-f", "md", "--db", db))
""")


def test_read_commands_start_without_torch(tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    with open_store(db) as store:
        for run_id, cell in (("aaaa0000", "base"), ("bbbb0000", "conpool")):
            add_finished_run(store, run_id, "table3", cell, 0,
                             {"top1_cls": 0.5, "top1_loc": 0.3, "gt_known_loc": 0.4}, correct=[1, 0, 1, 1])
    out = subprocess.run([sys.executable, "-c", _PROBE, db], capture_output=True, text=True, timeout=300, check=False,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    loaded = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ", 1)[0] in
                  ("help", "runs", "claims", "compare", "report"))
    assert loaded["help"] == "[]"  # no torch, no pandas, no SQLAlchemy for --help
    for command in ("runs", "claims", "compare", "report"):
        assert "torch" not in loaded[command], command
    # each command did its work: the runs listed, the ledger printed, the paired tests run, the tables rendered
    assert "bbbb0000" in out.stdout and "claims ledger" in out.stdout
    assert "paired per-image tests on 4 images" in out.stdout and "### Table 3" in out.stdout
