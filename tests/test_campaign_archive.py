"""The campaign archives kept in the repository (``campaigns/*/``, written by ``kdcicam runs archive``):
each run is a finished run of the archive's profile, trained by a commit its README names, and its
files are intact; a sample imports into a fresh store with every per-image record."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from kdcicam.cli import main
from kdcicam.store import open_store

CAMPAIGNS = Path(__file__).resolve().parent.parent / "campaigns"
ARCHIVES = sorted(p for p in CAMPAIGNS.glob("*") if (p / "README.md").is_file()) if CAMPAIGNS.is_dir() else []


def _runs(archive: Path) -> list[Path]:
    return sorted(p for p in archive.iterdir() if (p / "rows.json.gz").is_file())


@pytest.mark.parametrize("archive", ARCHIVES, ids=[p.name for p in ARCHIVES])
def test_every_archived_run_is_finished_trained_by_a_named_commit_and_intact(archive):
    line = re.search(r"^Training commits: (.+)$", (archive / "README.md").read_text(), re.MULTILINE)
    named = tuple(re.findall(r"`([0-9a-f]{7,40})`", line.group(1))) if line else ()
    assert named, f"{archive}/README.md has no 'Training commits: `abc1234`, ...' line"
    for folder in _runs(archive):
        rows = json.loads(gzip.decompress((folder / "rows.json.gz").read_bytes()))
        run = rows["run"]
        assert rows["format"] == 1 and run["id"] == folder.name and run["status"] == "finished"
        assert run["profile"] == "medium" and run["git_commit"].startswith(named), folder.name
        assert len(set(map(len, rows["image_records"].values()))) == 1
        manifest = folder / "files" / "checksums.json"
        sums = json.loads(manifest.read_text()) if manifest.is_file() else {}
        for checkpoint in (folder / "files").glob("*.pt"):
            digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
            accepted = sums.get(checkpoint.name)
            assert accepted and digest in accepted, f"{checkpoint}: not the checkpoint its manifest names"


@pytest.mark.parametrize("archive", ARCHIVES, ids=[p.name for p in ARCHIVES])
def test_an_archived_run_imports_with_all_its_records(archive, tmp_path):
    runs = _runs(archive)
    if not runs:
        pytest.skip(f"{archive.name} holds no finished run yet")
    sample = tmp_path / "sample"
    sample.mkdir()
    (sample / runs[0].name).symlink_to(runs[0], target_is_directory=True)
    with pytest.raises(SystemExit) as done:
        main(["runs", "import", str(sample), "--db", str(tmp_path / "runs.db"), "--artifacts", str(tmp_path / "art")])
    assert done.value.code in (0, None)
    rows = json.loads(gzip.decompress((runs[0] / "rows.json.gz").read_bytes()))
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        info = store.get_run(runs[0].name)
        finals = store.final_metrics([info.id])
        count = sum(len(store.get_image_records(info.id, *group))
                    for group in {tuple(g) for g in finals[finals["split"] == "test"][
                        ["protocol", "selection", "split", "threshold_policy"]].itertuples(index=False)})
    assert info.status == "finished" and count == len(rows["image_records"]["image_id"])
