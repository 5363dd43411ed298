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


def test_train_no_headers_finds_the_cut_image_only_while_training(cut_ilsvrc, tmp_path, capsys):
    from kdcicam.store import open_store

    db = tmp_path / "runs.db"
    argv = ["train", "--profile", "smoke", "--dataset", "ilsvrc", "--data", str(cut_ilsvrc), "--db", str(db),
            "--artifacts", str(tmp_path / "runs"), "--quiet"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "truncated image file" in err
    with open_store(f"sqlite:///{db}", create=False) as store:
        assert store.list_runs() == []
    code, out, _ = run_cli([*argv, "--no-headers"], capsys)
    assert code == 1 and "failed" in out
    with open_store(f"sqlite:///{db}", create=False) as store:
        assert [run.status for run in store.list_runs()] == ["failed"]


def test_the_opener_reads_headers_unless_told_not_to(tmp_path):
    root = write_wsol(tmp_path / "wsol")
    _cut(root / "c0" / "tr1.jpg")
    data = DataConfig(dataset="wsol", root=str(root))
    with pytest.raises(DataError, match="truncated image file"):
        ranked_opener(tmp_path / "cache", None)(data)
    index = ranked_opener(tmp_path / "cache", None, read_headers=False)(data)
    assert len(index.train) + len(index.val) == 6 and all(s.size == (24, 20) for s in index.test)


def test_every_header_read_is_counted_and_none_without_headers(tmp_path):
    from kdcicam.data.header_count import watching_headers
    from kdcicam.data.loader import scan_dataset

    root = write_ilsvrc(tmp_path / "ilsvrc")  # 6 train + 2 val images
    reads = []
    with watching_headers(lambda: reads.append(1)):
        assert scan_dataset(root).defects == []
        assert len(reads) == 8
        scan_dataset(root, read_headers=False)
    assert len(reads) == 8
    scan_dataset(root)  # outside the block: nobody is told
    assert len(reads) == 8


def test_header_progress_shows_on_a_terminal_only_and_not_when_quiet(tmp_path):
    import io

    from rich.console import Console

    from kdcicam.cli.header_progress import header_progress
    from kdcicam.data.loader import scan_dataset

    root = write_wsol(tmp_path / "wsol")  # 8 images

    def shown(quiet: bool, terminal: bool, show_after: int) -> str:
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal, width=100)
        with header_progress(quiet, console=console, show_after=show_after):
            scan_dataset(root)
        return out.getvalue()

    assert "reading image headers" in shown(False, True, show_after=3)
    assert shown(False, True, show_after=9) == ""  # fewer headers than the threshold
    assert shown(True, True, show_after=3) == ""
    assert shown(False, False, show_after=3) == ""
