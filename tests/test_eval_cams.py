"""``kdcicam eval-cams``: saved CAMs of any method scored on a tiny wsolevaluation metadata folder.

Test split, scored at ``size`` 16:
- ``a/t0.png``, 40 x 20, GT (10, 5, 30, 15); the 16-frame maps (x, y) -> (0.4 x, 0.8 y): GT (4, 4, 12, 12).
- ``b/t1.png``, 32 x 32, GT (0, 0, 16, 16) and (16, 16, 32, 32); frame x -> x / 2: (0, 0, 8, 8), (8, 8, 16, 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from kdcicam.cli.evalcams import register
from kdcicam.core.errors import ConfigError, DataError
from kdcicam.data.base import DatasetIndex, Sample
from kdcicam.data.wsol import export_wsol, load_wsol
from kdcicam.evaluation.saved_cams import cam_candidates, load_cam, normalize_cam, score_cams

T0, T1 = "a/t0.png", "b/t1.png"


def block(side: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((side, side), dtype=np.float32)
    m[y0:y1, x0:x1] = 1.0
    return m


def _sample(root: Path, image_id: str, label: int, size: tuple[int, int], boxes) -> Sample:
    path = root / image_id
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)
    return Sample(image_id=image_id, path=path, label=label, boxes=tuple(boxes), size=size)


@pytest.fixture
def meta(tmp_path) -> Path:
    """A wsolevaluation metadata folder written by export_wsol (train: one image per class)."""
    images = tmp_path / "images"
    train = (_sample(images, "a/r0.png", 0, (8, 8), [(0, 0, 8, 8)]),
             _sample(images, "b/r1.png", 1, (8, 8), [(0, 0, 8, 8)]))
    test = (_sample(images, T0, 0, (40, 20), [(10, 5, 30, 15)]),
            _sample(images, T1, 1, (32, 32), [(0, 0, 16, 16), (16, 16, 32, 32)]))
    index = DatasetIndex(name="cub", root=tmp_path, classes=("a", "b"), train=train, test=test)
    export_wsol(index, tmp_path / "meta")
    return tmp_path / "meta"


def save(cam_dir: Path, name: str, cam: np.ndarray) -> Path:
    path = cam_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, cam)
    return path


def perfect_cams(cam_dir: Path) -> Path:
    # t0: an 8x8 CAM, block cols/rows 2-5, saved wsolevaluation-style as <image_id>.npy.
    # Bilinear 8 -> 16 (source x = i / 2 - 0.25) gives the column profile
    #   col 3: 0.25, col 4: 0.75, cols 5-10: 1, col 11: 0.75, col 12: 0.25 (rows alike, map = product).
    save(cam_dir, "a/t0.png.npy", block(8, 2, 2, 6, 6))
    # t1: a 16x16 CAM exactly on GT box 2, saved with the extension replaced.
    save(cam_dir, "b/t1.npy", block(16, 8, 8, 16, 16))
    return cam_dir


def test_perfect_cams_by_hand(meta, tmp_path):
    index = load_wsol(meta)
    scores = score_cams(perfect_cams(tmp_path / "cams"), index.test, thetas=(0.2, 0.5), size=16,
                        cam_thresholds=10)
    r0, r1 = scores.records
    # t0 at θ = 0.5: > 0.5 keeps cols/rows 4-11 (corner 0.75² = 0.5625) -> frame (4, 4, 12, 12)
    # -> original (4 / 0.4, 4 / 0.8, 12 / 0.4, 12 / 0.8) = (10, 5, 30, 15): IoU 1.
    # At θ = 0.2 the 0.25 edges join: (3, 3, 13, 13) -> (7.5, 3.75, 32.5, 16.25):
    # IoU = (20 x 10) / (25 x 12.5) = 0.64 >= 0.5.
    assert r0["box"] == [[7.5, 3.75, 32.5, 16.25], [10.0, 5.0, 30.0, 15.0]]
    assert r0["iou"] == [pytest.approx(0.64), 1.0] and r0["correct_gt_known"] == [True, True]
    # t1: (8, 8, 16, 16) -> (16, 16, 32, 32): IoU 1 with the *second* GT box.
    assert r1["box"] == [[16.0, 16.0, 32.0, 32.0]] * 2 and r1["iou"] == [1.0, 1.0]
    assert scores.gt_known_loc == (1.0, 1.0) and scores.images == 2
    # MaxBoxAccV2 over t = 0, 0.1, ..., 0.9. t1 is right everywhere. t0: t <= 0.2 -> IoU 0.64;
    # 0.3 <= t <= 0.7 -> IoU 1; t >= 0.8 -> only the 1-plateau, (5, 5, 11, 11) -> IoU 36/64 = 0.5625.
    assert scores.curve["iou_0.3"] == [1.0] * 10
    assert scores.curve["iou_0.5"] == [1.0] * 10
    assert scores.curve["iou_0.7"] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert scores.maxboxacc == {"iou_0.3": 1.0, "iou_0.5": 1.0, "iou_0.7": 1.0}
    assert scores.best_threshold["iou_0.7"] == pytest.approx(0.3) and scores.best_threshold["iou_0.3"] == 0.0
    assert scores.maxboxacc_v2 == 1.0
    out = json.loads(json.dumps(scores.to_dict(records=True)))
    assert out["gt_known_loc"] == {"0.2": 1.0, "0.5": 1.0}
    assert out["top1_cls"] is None and out["top1_loc"] is None and out["records"][1]["image_id"] == T1


def test_all_zero_cams_give_the_fallback(meta, tmp_path):
    cam_dir = tmp_path / "cams"
    save(cam_dir, "a/t0.npy", np.zeros((7, 5)))
    save(cam_dir, "b/t1.npy", np.full((4, 4), 2.5))  # constant: min-max makes it all zeros
    scores = score_cams(cam_dir, load_wsol(meta).test, size=16, cam_thresholds=10)
    assert [r["box"] for r in scores.records] == [[[0.0, 0.0, 0.0, 0.0]]] * 2
    assert [r["iou"] for r in scores.records] == [[0.0], [0.0]]
    assert scores.gt_known_loc == (0.0,) and scores.thetas == (0.2,)
    assert scores.maxboxacc_v2 == 0.0 and scores.curve["iou_0.3"] == [0.0] * 10


def test_cam_files_named_both_ways_and_validated(tmp_path):
    assert cam_candidates(tmp_path, "a/x.jpg") == (tmp_path / "a/x.jpg.npy", tmp_path / "a/x.npy")
    assert cam_candidates(tmp_path, "noext") == (tmp_path / "noext.npy",)
    bad_ndim = save(tmp_path, "c.npy", np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match=r"c\.npy: unusable CAM: .*2-D.*\(1, 4, 4\)"):
        load_cam(bad_ndim)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"junk\.npy: not a readable \.npy array"):
        load_cam(tmp_path / "junk.npy")
    assert load_cam(save(tmp_path, "ok.npy", np.eye(3, dtype=np.float16))).dtype == np.float64
    # bilinear, align_corners=False: [[0, 1]] 1x2 -> 1x4 is 0, 0.25, 0.75, 1 (then min-max)
    assert normalize_cam(np.array([[0.0, 2.0], [0.0, 2.0]]), 4)[0].tolist() == [0.0, 0.25, 0.75, 1.0]


def test_both_candidate_files_is_an_error(meta, tmp_path):
    cam_dir = perfect_cams(tmp_path / "cams")
    save(cam_dir, "a/t0.npy", np.zeros((4, 4)))
    with pytest.raises(DataError, match="two CAM files"):
        score_cams(cam_dir, load_wsol(meta).test, size=16)


def test_bad_settings(meta, tmp_path):
    test = load_wsol(meta).test
    with pytest.raises(ConfigError, match="theta = 1.5"):
        score_cams(tmp_path, test, thetas=(1.5,))
    with pytest.raises(ConfigError, match="size = 0"):
        score_cams(tmp_path, test, size=0)
    with pytest.raises(ConfigError, match="cam_thresholds = 0"):
        score_cams(tmp_path, test, cam_thresholds=0)
    with pytest.raises(DataError, match="no such folder"):
        score_cams(tmp_path / "none", test)


# --------------------------------------------------------------------------- the command

@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """Test root."""

    register(app)
    return app


def invoke(app, *args: str):
    return CliRunner().invoke(app, ["eval-cams", *map(str, args)])


def test_command_json_and_table(app, meta, tmp_path):
    cam_dir = perfect_cams(tmp_path / "cams")
    result = invoke(app, cam_dir, "--metadata", meta, "--size", 16, "--theta", 0.2, "--theta", 0.5, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["images"] == 2 and out["gt_known_loc"] == {"0.2": 1.0, "0.5": 1.0}
    assert out["maxboxacc_v2"] == 1.0 and out["top5_loc"] is None
    assert out["not_available"]["metrics"] == ["top1_cls", "top5_cls", "top1_loc", "top5_loc"]
    table = invoke(app, cam_dir, "--metadata", meta, "--size", 16)
    assert table.exit_code == 0, table.output
    assert "GT-known Loc (θ = 0.2)" in table.output and "100.00" in table.output and "n/a" in table.output


def test_command_nan_cam_is_one_line_exit_2(app, meta, tmp_path):
    cam_dir = perfect_cams(tmp_path / "cams")
    cam = block(16, 8, 8, 16, 16)
    cam[3, 5] = np.nan
    save(cam_dir, "b/t1.npy", cam)
    result = invoke(app, cam_dir, "--metadata", meta, "--size", 16)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "b/t1.npy: unusable CAM" in result.output and "NaN at row 3, column 5" in result.output


def test_command_missing_cam_is_one_line_exit_2(app, meta, tmp_path):
    cam_dir = tmp_path / "cams"
    save(cam_dir, "b/t1.npy", block(16, 8, 8, 16, 16))
    result = invoke(app, cam_dir, "--metadata", meta)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no CAM for test image 'a/t0.png'" in result.output
    assert "1 of 2 test images have no CAM" in result.output


def test_command_bad_metadata_and_theta_are_one_line(app, meta, tmp_path):
    result = invoke(app, tmp_path, "--metadata", tmp_path / "nowhere")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no such folder" in result.output
    result = invoke(app, perfect_cams(tmp_path / "cams"), "--metadata", meta, "--theta", -0.1)
    assert result.exit_code == 2 and "theta = -0.1: must be in [0, 1]" in result.output
