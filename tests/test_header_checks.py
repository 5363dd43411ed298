"""Every dataset format reads every image header by default; ``--no-headers`` skips it (docs/bad-inputs.md)."""

from __future__ import annotations

import pytest
from _bad_cases_headers import SYNSETS, write_ilsvrc, write_wsol
from _cli import run_cli

from kdcicam.cli.run_setup import ranked_opener
from kdcicam.core.config import DataConfig
from kdcicam.core.errors import DataError


def _cut(path) -> None:
    path.write_bytes(path.read_bytes()[:-2])  # no JPEG end-of-image marker


@pytest.fixture()
def cut_ilsvrc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDCICAM_CACHE", str(tmp_path / "cache"))
    root = write_ilsvrc(tmp_path / "ilsvrc")
    _cut(root / "train" / SYNSETS[1] / f"{SYNSETS[1]}_0.JPEG")
    return root


def test_data_check_no_headers_skips_the_end_marker_check(cut_ilsvrc, capsys):
    code, _, err = run_cli(["data", "check", str(cut_ilsvrc)], capsys)
    assert code == 2 and "truncated image file" in err
    code, out, err = run_cli(["data", "check", str(cut_ilsvrc), "--no-headers", "--json"], capsys)
    assert code == 0, err
    assert '"headers_read": 0' in out


def test_ablate_no_headers_plans_on_a_dataset_whose_image_is_cut_short(cut_ilsvrc, tmp_path, capsys):
    argv = ["ablate", "table3", "--profile", "smoke", "--dataset", "ilsvrc", "--data", str(cut_ilsvrc),
            "--db", str(tmp_path / "runs.db"), "--artifacts", str(tmp_path / "runs"), "--dry-run", "--json"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "truncated image file" in err
    code, out, err = run_cli([*argv, "--no-headers"], capsys)
    assert code == 0, err
    assert "run_id" in out


def test_the_opener_reads_headers_unless_told_not_to(tmp_path):
    root = write_wsol(tmp_path / "wsol")
    _cut(root / "c0" / "tr1.jpg")
    data = DataConfig(dataset="wsol", root=str(root))
    with pytest.raises(DataError, match="truncated image file"):
        ranked_opener(tmp_path / "cache", None)(data)
    index = ranked_opener(tmp_path / "cache", None, read_headers=False)(data)
    assert len(index.train) + len(index.val) == 6 and all(s.size == (24, 20) for s in index.test)
