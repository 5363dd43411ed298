"""``kdcicam data check``, check_dataset / find_defects, format detection and load_dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from kdcicam.cli import app
from kdcicam.core.errors import ConfigError, DataError
from kdcicam.data.check import check_dataset, find_defects, run_check
from kdcicam.data.loader import detect_format, load_dataset

# 2 classes x (2 train + 1 test); image 2 is grayscale and 30x10, the others RGB 20x16.
CUB = {
    "images.txt": "1 a/1.jpg\n2 a/2.png\n3 a/3.jpg\n4 b/4.jpg\n5 b/5.jpg\n6 b/6.jpg\n",
    "image_class_labels.txt": "1 1\n2 1\n3 1\n4 2\n5 2\n6 2\n",
    "train_test_split.txt": "1 1\n2 1\n3 0\n4 1\n5 1\n6 0\n",
    "bounding_boxes.txt": "1 0 0 5 5\n2 1 1 5 5\n3 0 0 5 5\n3 5 5 5 5\n3 9 9 5 5\n4 0 0 5 5\n5 0 0 5 5\n6 0 0 5 5\n",
    "classes.txt": "1 a\n2 b\n",
}


def make_cub(root: Path, **overrides: str | None) -> Path:
    for rel in ("a/1.jpg", "a/3.jpg", "b/4.jpg", "b/5.jpg", "b/6.jpg"):
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16)).save(root / "images" / rel)
    Image.new("L", (30, 10)).save(root / "images" / "a" / "2.png")
    for name, text in {**CUB, **overrides}.items():
        if text is not None:
            (root / name).write_text(text)
    return root


def test_summary_of_a_sound_dataset(tmp_path):
    summary = check_dataset(make_cub(tmp_path))
    assert summary == {
        "format": "cub", "name": "cub", "root": str(tmp_path.absolute()), "classes": 2,
        "train": 4, "val": 0, "test": 2,
        "boxes": 8, "max_boxes_per_image": 3, "images_without_boxes": 0,  # image 3 has 3 boxes
        "image_width": [20, 30], "image_height": [10, 16], "sizes_known": 6,
        "grayscale": 1, "headers_read": 6, "fingerprint": summary["fingerprint"],
    }
    assert len(summary["fingerprint"]) == 16


def test_every_defect_is_listed_and_check_dataset_raises_the_first(tmp_path):
    make_cub(tmp_path, **{"images.txt": CUB["images.txt"].replace("b/5.jpg", "../5.jpg"),
                          "bounding_boxes.txt": CUB["bounding_boxes.txt"].replace("6 0 0 5 5", "6 0 0 25 5"),
                          "train_test_split.txt": None})
    assert find_defects(tmp_path) == [
        f"{tmp_path}/bounding_boxes.txt:8: box (0, 0, 25, 5) lies outside its 20x16 image",
        f"{tmp_path}/images.txt:5: image path '../5.jpg' escapes {tmp_path}/images ('..' component)",
        f"{tmp_path}/train_test_split.txt: missing file",
    ]
    with pytest.raises(DataError) as info:
        check_dataset(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}/bounding_boxes.txt:8: box") and "(and 2 more defects" in str(info.value)


def test_deep_check_finds_truncated_images(tmp_path):
    make_cub(tmp_path)
    path = tmp_path / "images" / "b" / "6.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-2000])  # header intact, the last pixels cut off
    (tmp_path / "bounding_boxes.txt").write_text(CUB["bounding_boxes.txt"])  # boxes still fit 64x64
    (defect,) = find_defects(tmp_path, deep=True)
    assert defect.startswith(f"{tmp_path}/images.txt:6: unreadable image") and defect.endswith("images/b/6.jpg")
    # the header is intact, but the file lacks its end marker: found by the header read too
    (defect,) = find_defects(tmp_path)
    assert defect.startswith(f"{tmp_path}/images.txt:6: truncated image file (no JPEG end-of-image marker")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_end_marker_check_on_whole_and_cut_files(tmp_path, fmt):
    from kdcicam.data.image_files import end_problem

    path = tmp_path / f"x.{fmt.lower()}"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, fmt)
    assert end_problem(path) is None
    path.write_bytes(path.read_bytes() + b"\0" * 100)  # padding after the end marker is allowed
    assert end_problem(path) is None
    path.write_bytes(path.read_bytes()[:-200])
    assert "truncated image file" in end_problem(path)
    (tmp_path / "x.bmp").write_bytes(b"BM" + b"\0" * 10)  # other formats are not checked here
    assert end_problem(tmp_path / "x.bmp") is None


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_detect_format(tmp_path):
    _touch(tmp_path / "c" / "images.txt")
    _touch(tmp_path / "i" / "LOC_synset_mapping.txt")
    _touch(tmp_path / "w" / "test" / "image_ids.txt")
    _touch(tmp_path / "m" / "metadata" / "train" / "image_ids.txt")
    assert [detect_format(tmp_path / d) for d in "ciwm"] == ["cub", "ilsvrc", "wsol", "wsol"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: unknown dataset layout \(looked for cub: images.txt; "
                                        r"ilsvrc: LOC_synset_mapping.txt; wsol: train/image_ids.txt or"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DataError, match="nope: no such folder"):
        detect_format(tmp_path / "nope")


def test_load_dataset_carves_val_and_rejects_unknown_format(tmp_path):
    make_cub(tmp_path)
    index = load_dataset(tmp_path, val_fraction=0.5, split_seed=0)
    # 2 train images per class: round(0.5 * 2) = 1 held out per class
    assert len(index.val) == 2 and len(index.train) == 2 and len(index.test) == 2
    assert sorted(s.label for s in index.val) == [0, 1]
    assert load_dataset(tmp_path, format="synthetic").name == "cub"  # alias: the benchmark's layout
    with pytest.raises(ConfigError, match="format: unknown 'coco'"):
        load_dataset(tmp_path, format="coco")
    assert run_check(tmp_path, format="coco").defects[0].startswith("format: unknown 'coco'")


def test_check_dataset_on_a_wsol_export(tmp_path):
    from kdcicam.data.wsol import export_wsol

    export_wsol(load_dataset(make_cub(tmp_path / "cub"), val_fraction=0.5), tmp_path / "meta")
    summary = check_dataset(tmp_path / "meta")
    assert (summary["format"], summary["train"], summary["val"], summary["test"]) == ("wsol", 2, 2, 2)
    assert summary["grayscale"] == 1 and summary["boxes"] == 8


# --- the command line --------------------------------------------------------------------------

runner = CliRunner()


def test_cli_check_prints_the_summary(tmp_path):
    make_cub(tmp_path)
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "fingerprint" in result.stdout and "max_boxes_per_image" in result.stdout
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["train"] == 4


def test_cli_check_one_defect_one_line_exit_2(tmp_path):
    make_cub(tmp_path, **{"image_class_labels.txt": CUB["image_class_labels.txt"].replace("4 2", "4 two")})
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path}/image_class_labels.txt:4: class_id is not an integer: 'two'\n"
    assert result.stdout == "" and "Traceback" not in result.output


def test_cli_check_lists_every_defect(tmp_path):
    make_cub(tmp_path, **{"classes.txt": "1 a\n2 b\n3 c\n", "images.txt": CUB["images.txt"] + "7 /etc/passwd\n"})
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 5  # class 3 empty; image 7: bad path + 3 files lack it
    assert lines[-2].startswith(f"{tmp_path}/images.txt:7: absolute image path '/etc/passwd'")
    assert f"{tmp_path}/classes.txt:3: class 3 'c' has no images" in lines


@pytest.mark.parametrize("args", [["nope"], ["--format", "coco", "."], ["empty"]])
def test_cli_check_bad_folder_or_format(tmp_path, args):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / a) if a in ("nope", "empty") else a for a in args]
    result = runner.invoke(app, ["data", "check", *args])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output


def test_python_dash_m_reports_without_traceback(tmp_path):
    make_cub(tmp_path, **{"train_test_split.txt": None})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "kdcicam", "data", "check", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"{tmp_path}/train_test_split.txt: missing file\n"
