"""``scripts/findings_campaign.sh`` end to end: Table 3's pilot and its seed rule at the smoke profile,
rerun without retraining; a failing step makes the script exit non-zero and says so in its log."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import pytest
from _runs import REPO, kdcicam_env, smoke_cache  # noqa: F401

SCRIPT = REPO / "scripts" / "findings_campaign.sh"


def _campaign(folder, cache, steps: str, *args: str) -> subprocess.CompletedProcess:
    env = {**kdcicam_env(cache), "KDCICAM_THREADS": "1", "PYTHON": sys.executable, "JOBS": "1", "STEPS": steps}
    return subprocess.run(["bash", str(SCRIPT), str(folder), *args], capture_output=True, text=True, env=env,
                          timeout=1200)


def test_no_folder_is_a_usage_error():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")


def test_a_failing_step_exits_non_zero_and_the_log_says_so(tmp_path, smoke_cache):  # noqa: F811
    proc = _campaign(tmp_path / "c", smoke_cache, "no-such-table reference", "smoke")
    log = (tmp_path / "c" / "campaign.log").read_text()
    assert proc.returncode == 1, log
    assert "rc=2 ablate no-such-table --variant reference --seeds 3" in log  # ablate: unknown table
    assert log.rstrip().endswith("done, with failed steps (rerun to resume them)")


@pytest.mark.slow
def test_table3_pilot_then_seed_rule_then_rerun_trains_nothing(tmp_path, smoke_cache):  # noqa: F811
    folder = tmp_path / "campaign"
    first = _campaign(folder, smoke_cache, "table3 reference", "smoke")
    log = (folder / "campaign.log").read_text()
    assert first.returncode == 0, log[-3000:]
    assert "rc=0 ablate table3 --variant reference --seeds 3" in log
    rule = re.search(r"seed rule: table3, variant reference: (\d+|no more seeds)", log)
    assert rule, log[-3000:]
    seeds = 3 if rule.group(1) == "no more seeds" else int(rule.group(1))
    assert 3 <= seeds <= 8  # the pre-registered rule's cap
    if seeds > 3:
        assert f"rc=0 ablate table3 --variant reference --seeds {seeds}" in log
    with sqlite3.connect(folder / "runs.db") as db:
        rows = db.execute("select role, seed, status from runs").fetchall()
    assert {status for _, _, status in rows} == {"finished"}
    assert sorted({seed for _, seed, _ in rows}) == list(range(seeds))
    # per seed: two teachers, two students (Base, +ConPool), one distilled run
    assert sorted(role for role, seed, _ in rows if seed == 0) == [
        "cls_teacher", "distilled", "loc_teacher", "student", "student"]

    again = _campaign(folder, smoke_cache, "table3 reference", "smoke")
    log = (folder / "campaign.log").read_text()
    assert again.returncode == 0, log[-3000:]
    second = log[log.rindex("start commit"):]
    assert re.findall(r"(\d+) trained", second) == ["0"] * second.count("rc=0 ablate"), second
    with sqlite3.connect(folder / "runs.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == len(rows)
