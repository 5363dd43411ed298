"""``kdcicam eval-cams``: saved CAMs scored from a wsolevaluation split folder alone (no images).

Test split, scored at ``size`` 16 (``resize_bbox``: x * 16 / W, truncated):
- ``a/t0.png``, 40 x 20, GT (10, 5, 30, 15) -> (4, 4, 12, 12).
- ``b/t1.png``, 32 x 32, GT (0, 0, 16, 16) and (16, 16, 32, 32) -> (0, 0, 8, 8) and (8, 8, 16, 16).
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
from kdcicam.data.wsol_split import read_split, split_folder
from kdcicam.evaluation.cam_files import cam_candidates, load_cam, normalize_cam
from kdcicam.evaluation.saved_cams import CamProblemsError, score_cams

T0, T1 = "a/t0.png", "b/t1.png"


def block(side: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((side, side), dtype=np.float32)
    m[y0:y1, x0:x1] = 1.0
    return m


def write_split(folder: Path, ids, sizes=None, localization=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    if sizes:
        (folder / "image_sizes.txt").write_text("".join(f"{i},{w},{h}\n" for i, (w, h) in sizes.items()))
    (folder / "localization.txt").write_text("".join(f"{line}\n" for line in localization))
    return folder


@pytest.fixture
def meta(tmp_path) -> Path:
    """metadata/test of the two images; no images, no train split."""
    return write_split(tmp_path / "metadata" / "test", [T0, T1], {T0: (40, 20), T1: (32, 32)},
                       [f"{T0},10,5,30,15", f"{T1},0,0,16,16", f"{T1},16,16,32,32"])


def save(cam_dir: Path, name: str, cam) -> Path:
    path = cam_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, cam)
    return path


def perfect_cams(cam_dir: Path) -> Path:
    save(cam_dir, "a/t0.png.npy", block(16, 4, 4, 12, 12))  # wsolevaluation's name: <image_id>.npy
    save(cam_dir, "b/t1.npy", block(16, 8, 8, 16, 16))  # the extension replaced
    return cam_dir


def test_perfect_cams_by_hand(meta, tmp_path):
    scores = score_cams(perfect_cams(tmp_path / "cams"), read_split(meta), thetas=(0.2, 0.5), size=16,
                        cam_thresholds=10)
    r0, r1 = scores.records
    # t0: one contour, boundingRect (4, 4, 8, 8) -> box (4, 4, 12, 12) = the GT: "+1" IoU 1 at every θ.
    assert r0["box"] == [[4.0, 4.0, 12.0, 12.0]] * 2 and r0["iou"] == [1.0, 1.0]
    # t1: the block touches the right/bottom edge: (8, 8, min(16, 15), min(16, 15)) = (8, 8, 15, 15);
    # against GT 2 (8, 8, 16, 16): 8 x 8 = 64 over 9 x 9 = 81 -> 0.79 (GT 1: no overlap).
    assert r1["box"] == [[8.0, 8.0, 15.0, 15.0]] * 2 and r1["iou"] == [pytest.approx(64 / 81)] * 2
    assert scores.gt_known_loc == (1.0, 1.0) and scores.images == 2 and scores.box_rule == "wsolevaluation"
    # every threshold finds the same boxes: 100 % at IoU .3, .5, .7 everywhere; best θ = the first
    assert scores.curve["iou_0.7"] == [1.0] * 10 and scores.maxboxacc_v2 == 1.0
    assert scores.best_threshold == {"iou_0.3": 0.0, "iou_0.5": 0.0, "iou_0.7": 0.0}
    out = json.loads(json.dumps(scores.to_dict(records=True)))
    assert out["gt_known_loc"] == {"0.2": 1.0, "0.5": 1.0} and out["metric_version"] == 2
    assert out["top1_cls"] is None and out["records"][1]["image_id"] == T1


def test_zero_size_box_and_legacy(tmp_path):
    # GT (10, 5, 10, 5) of a 40 x 20 image -> (4, 4, 4, 4): one pixel under "+1". A CAM of that one
    # pixel: boundingRect (4, 4, 1, 1) -> box (4, 4, 5, 5), 2 x 2 pixels: IoU 1 / 4.
    meta = write_split(tmp_path / "test", [T0], {T0: (40, 20)}, [f"{T0},10,5,10,5"])
    cam_dir = tmp_path / "cams"
    save(cam_dir, "a/t0.npy", block(16, 4, 4, 5, 5))
    scores = score_cams(cam_dir, read_split(meta), size=16, cam_thresholds=4, legacy=True)
    assert scores.records[0]["iou"] == [0.25] and scores.maxboxacc["iou_0.3"] == 0.0
    assert scores.legacy_maxboxacc == {"iou_0.3": 0.0, "iou_0.5": 0.0, "iou_0.7": 0.0}
    assert score_cams(cam_dir, read_split(meta), size=16, iou_levels=(0.25,)).maxboxacc == {"iou_0.25": 1.0}


def test_cams_of_another_size_or_range_are_adjusted_and_counted(meta, tmp_path):
    cam_dir = tmp_path / "cams"
    save(cam_dir, "a/t0.npy", block(8, 2, 2, 6, 6))  # 8 x 8: resized to 16 x 16 and min-max normalised
    save(cam_dir, "b/t1.npy", 3 * block(16, 8, 8, 16, 16))  # values up to 3: min-max normalised
    scores = score_cams(cam_dir, read_split(meta), size=16, cam_thresholds=10)
    assert scores.adjusted == {"resized": 1, "normalised": 1}
    assert scores.records[1]["box"] == [[8.0, 8.0, 15.0, 15.0]]


def test_every_missing_or_malformed_cam_is_one_line(meta, tmp_path):
    cam_dir = tmp_path / "cams"
    nan = block(16, 0, 0, 4, 4)
    nan[3, 5] = np.nan
    save(cam_dir, "a/t0.npy", nan)
    with pytest.raises(CamProblemsError) as caught:
        score_cams(cam_dir, read_split(meta), size=16)
    lines = caught.value.lines
    assert len(lines) == 2 and "2 of 2 images" in str(caught.value)
    assert "b/t1.png: no CAM" in lines[0] and "NaN at row 3, column 5" in lines[1]


def test_cam_files_named_both_ways_and_validated(tmp_path):
    assert cam_candidates(tmp_path, "a/x.jpg") == (tmp_path / "a/x.jpg.npy", tmp_path / "a/x.npy")
    assert cam_candidates(tmp_path, "noext") == (tmp_path / "noext.npy",)
    with pytest.raises(DataError, match=r"c\.npy: unusable CAM: .*2-D.*\(1, 4, 4\)"):
        load_cam(save(tmp_path, "c.npy", np.zeros((1, 4, 4))))
    with pytest.raises(DataError, match=r"p\.npy: not a plain \.npy array: a pickled object"):
        load_cam(save(tmp_path, "p.npy", np.array([{"a": 1}], dtype=object)))
    with pytest.raises(DataError, match="real numeric dtype"):
        load_cam(save(tmp_path, "b.npy", np.ones((3, 3), dtype=bool)))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"junk\.npy: not a plain \.npy array"):
        load_cam(tmp_path / "junk.npy")
    assert load_cam(save(tmp_path, "ok.npy", np.eye(3, dtype=np.float16))).dtype == np.float64
    # bilinear, align_corners=False: [[0, 1]] 1x2 -> 1x4 is 0, 0.25, 0.75, 1 (then min-max)
    assert normalize_cam(np.array([[0.0, 2.0], [0.0, 2.0]]), 4)[0].tolist() == [0.0, 0.25, 0.75, 1.0]


def test_both_candidate_files_is_a_problem_line(meta, tmp_path):
    cam_dir = perfect_cams(tmp_path / "cams")
    save(cam_dir, "a/t0.npy", np.zeros((4, 4)))
    with pytest.raises(CamProblemsError) as caught:
        score_cams(cam_dir, read_split(meta), size=16)
    assert "two CAM files" in caught.value.lines[0]


def test_bad_settings(meta, tmp_path):
    split = read_split(meta)
    with pytest.raises(ConfigError, match="theta = 1.5"):
        score_cams(tmp_path, split, thetas=(1.5,))
    with pytest.raises(ConfigError, match="size = 0"):
        score_cams(tmp_path, split, size=0)
    with pytest.raises(ConfigError, match="box_rule"):
        score_cams(tmp_path, split, box_rule="opencv")
    with pytest.raises(DataError, match="no such folder"):
        score_cams(tmp_path / "none", split)


def test_split_folder_from_root_and_split(meta):
    root = meta.parent
    assert split_folder(meta, None) == meta and split_folder(root, "test") == meta
    with pytest.raises(DataError, match="--split"):
        split_folder(root, None)
    with pytest.raises(DataError, match="val: no image_ids.txt"):
        split_folder(root, "val")


def test_bad_metadata_lines_name_file_and_line(tmp_path):
    write_split(tmp_path / "a", [T0], {T0: (40, 20)}, [f"{T0},10,5,x,15"])
    with pytest.raises(DataError, match=r"localization\.txt:1: 'x' is not a number"):
        read_split(tmp_path / "a")
    write_split(tmp_path / "b", [T0], {T0: (40, 20)}, [f"{T0},10,5,3,15"])
    with pytest.raises(DataError, match=r"localization\.txt:1: .* x1 < x0"):
        read_split(tmp_path / "b")


# --------------------------------------------------------------------------- PxAP

def _mask(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8) * 255).save(path)
    return path.name


def test_pxap_by_hand_with_an_ignore_region(tmp_path):
    # A 4 x 4 frame; the object = the top-left 2 x 2 (4 pixels, from an 8 x 8 mask: nearest takes
    # every second pixel); the ignore box = the right column. CAM: 1 on the object, on (3, 0) (in the
    # ignore region: not counted) and on (0, 3) (background); 0 elsewhere.
    # At the edge 1: TP 4, FP 1 -> precision 0.8, recall 1; lower edges add background only, recall
    # no longer grows: PxAP = 0.8 x 1 = 80. Best pixel F1 = 2·4 / (2·4 + 1) = 88.9, IoU 4 / 5 = 80.
    obj = np.zeros((8, 8), bool)
    obj[:4, :4] = True
    ignore = np.zeros((8, 8), bool)
    ignore[:, 6:] = True
    masks = tmp_path / "masks"
    _mask(masks / "m0.png", obj)
    _mask(masks / "i0.png", ignore)
    meta = write_split(tmp_path / "test", ["x.jpg"], localization=["x.jpg,m0.png,i0.png"])
    cam = np.zeros((4, 4))
    cam[:2, :2] = cam[0, 3] = cam[3, 0] = 1.0
    save(tmp_path / "cams", "x.jpg.npy", cam)
    scores = score_cams(tmp_path / "cams", read_split(meta), size=4, cam_thresholds=10, mask_root=masks)
    assert scores.pxap["pxap"] == pytest.approx(80.0)
    assert scores.pxap["pixel_f1"] == pytest.approx(800 / 9) and scores.pxap["pixel_iou"] == pytest.approx(80.0)
    assert scores.pxap["pixel_f1_threshold"] == 1.0 and scores.maxboxacc_v2 is None
    # the ignored pixel counts as background without the ignore mask: FP 2 -> PxAP 4 / 6
    meta = write_split(tmp_path / "test2", ["x.jpg"], localization=["x.jpg,m0.png,"])
    scores = score_cams(tmp_path / "cams", read_split(meta), size=4, cam_thresholds=10, mask_root=masks)
    assert scores.pxap["pxap"] == pytest.approx(400 / 6)


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
    result = invoke(app, cam_dir, "--metadata", meta.parent, "--split", "test", "--size", 16, "--theta", 0.2,
                    "--theta", 0.5, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["images"] == 2 and out["gt_known_loc"] == {"0.2": 1.0, "0.5": 1.0}
    assert out["maxboxacc_v2"] == 1.0 and out["top5_loc"] is None and out["box_rule"] == "wsolevaluation"
    table = invoke(app, cam_dir, "--metadata", meta, "--size", 16, "--box-rule", "continuous")
    assert table.exit_code == 0, table.output
    assert "NOT wsolevaluation's numbers" in table.output and "GT-known Loc (θ = 0.2" in table.output


def test_command_problems_one_line_each_then_exit_2(app, meta, tmp_path):
    cam_dir = tmp_path / "cams"
    save(cam_dir, "b/t1.npy", np.array([{"x": 1}], dtype=object))
    result = invoke(app, cam_dir, "--metadata", meta, "--size", 16)
    assert result.exit_code == 2 and result.output.count("\n") == 3
    assert "a/t0.png: no CAM" in result.output and "pickled object" in result.output
    assert result.output.splitlines()[-1].startswith("error: 2 of 2 images cannot be scored")


def test_command_bad_metadata_and_theta_are_one_line(app, meta, tmp_path):
    result = invoke(app, tmp_path, "--metadata", tmp_path / "nowhere")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "no image_ids.txt" in result.output
    result = invoke(app, perfect_cams(tmp_path / "cams"), "--metadata", meta, "--theta", -0.1)
    assert result.exit_code == 2 and "theta = -0.1: must be in [0, 1]" in result.output
