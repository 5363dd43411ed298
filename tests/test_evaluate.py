"""The evaluator, driven by a fake model on tiny constant-colour images, every number worked by hand.

Geometry used throughout (``cfg``): network input C = 16; paper protocol: square resize S = 24 then
a centre crop of 16 at offset round((24 - 16) / 2) = 4; standard protocol: whole image to 16 x 16.
For a 48 x 48 image the paper protocol maps x -> x / 2 - 4 (then clips to [0, 16]); the standard
protocol maps x -> x / 3. For a 64 x 32 image the standard protocol maps (x, y) -> (x / 4, y / 2).

The fake model returns CAMs already at 16 x 16, so the upsampling to the input size is the identity
and a 0/1 block map is the heatmap. Six classes; logits 6, 5, 4, 3, 2, 1 in the order of a
``ranking``. Eq. 3 gives the last-ranked class the weight -1 in both variants (reference γ =
-(k/5)² = 0, -.04, -.16, -.36, -.64, -1; paper γ = 1, .25, 0, 0, -.25, -1), so a CAM of ``-B`` on
the last-ranked class, every other CAM zero, makes the combinational heatmap exactly ``B``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcicam.core.config import EvalConfig, RunConfig
from kdcicam.core.errors import ConfigError
from kdcicam.data.base import Sample
from kdcicam.data.cub import load_cub
from kdcicam.data.pixel_steps import IMAGENET_MEAN, IMAGENET_STD
from kdcicam.evaluation.eval_result import FLAG_METRICS
from kdcicam.evaluation.evaluator import evaluate
from kdcicam.evaluation.protocols import protocol_transform
from kdcicam.model.output import CICAMOutput
from kdcicam.store import IMAGE_RECORD_FIELDS

C = 16  # network input side
N = 6  # classes
RANKED = [0, 1, 2, 3, 4, 5]  # class 0 best ... class 5 last
CPU = torch.device("cpu")


def cfg(variant: str = "reference", theta: float = 0.5, box_rule: str = "wsolevaluation") -> RunConfig:
    return RunConfig(variant=variant, eval=EvalConfig(theta=theta, test_resize=24, test_crop=C,
                                                       maxbox_thresholds=10, box_rule=box_rule)).validate()


def block(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """(C, C) map: 1 on the pixels of the continuous box (x0, y0, x1, y1), 0 elsewhere."""
    m = torch.zeros(C, C)
    m[y0:y1, x0:x1] = 1.0
    return m


def entry(ranking: list[int], maps: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n,) ranking the classes as given (6, 5, ..., 1) and CAMs (n, C, C) from ``maps``."""
    logits = torch.zeros(N)
    for rank, cls in enumerate(ranking):
        logits[cls] = float(N - rank)
    cams = torch.zeros(N, C, C)
    for cls, m in maps.items():
        cams[cls] = m
    return logits, cams


def heat_is(b: torch.Tensor, ranking: list[int] = RANKED) -> dict[int, torch.Tensor]:
    """CAMs whose combinational heatmap is exactly ``b`` in both variants (see the module docstring)."""
    return {ranking[-1]: -b}


class TableModel(torch.nn.Module):
    """A stand-in for CI-CAM: image k is a constant colour with red = 10k + 5; it returns table[k]."""

    def __init__(self, table: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.table = table
        self.seen_sizes: set[tuple[int, int]] = set()

    def forward(self, images: torch.Tensor, update_pool: bool = True) -> CICAMOutput:
        assert update_pool is False  # the evaluator must never update the context pool
        self.seen_sizes.add(tuple(images.shape[-2:]))
        red = images[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # (B,) in [0, 1]
        keys = [int(round(float(r) * 255)) // 10 for r in red]
        logits = torch.stack([self.table[k][0] for k in keys])  # (B, n)
        cams = torch.stack([self.table[k][1] for k in keys])  # (B, n, C, C)
        return CICAMOutput(logits=logits, logits_e=logits, cams=cams, cams_e=cams)


class Bench:
    """Tiny datasets on disk plus the model's answer for each image."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.samples: list[Sample] = []
        self.table: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, label: int, boxes: list[tuple[float, float, float, float]], ranking: list[int],
            maps: dict[int, torch.Tensor], size: tuple[int, int] = (48, 48)) -> str:
        key = len(self.samples)
        image_id = f"img{key}.png"
        Image.new("RGB", size, (10 * key + 5, 100, 100)).save(self.root / image_id)  # PNG: exact colour
        self.samples.append(Sample(image_id=image_id, path=self.root / image_id, label=label,
                                   boxes=tuple(boxes), size=size))
        self.table[key] = entry(ranking, maps)
        return image_id

    def run(self, protocol: str, variant: str = "reference", theta: float = 0.5, box_rule: str = "wsolevaluation",
            **kwargs):
        model = TableModel(self.table)
        result = evaluate(model, self.samples, cfg(variant, theta, box_rule), protocol, CPU, batch_size=2, **kwargs)
        assert model.seen_sizes == {(C, C)}
        return result


@pytest.fixture
def bench(tmp_path) -> Bench:
    return Bench(tmp_path)


VARIANTS = ["reference", "paper"]


# --------------------------------------------------------------------------- paper protocol

@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_perfect_map_classification_and_flags(bench, variant):
    # GT (16, 16, 40, 40) -> resized (8, 8, 20, 20) -> crop (4, 4, 16, 16); the heatmap is that block.
    gt, perfect = (16.0, 16.0, 40.0, 40.0), block(4, 4, 16, 16)
    bench.add(0, [gt], RANKED, heat_is(perfect))  # label ranked 1st
    bench.add(0, [gt], [1, 2, 3, 4, 5, 0], heat_is(perfect, [1, 2, 3, 4, 5, 0]))  # label ranked 6th
    bench.add(2, [gt], RANKED, heat_is(perfect))  # label ranked 3rd
    res = bench.run("paper", variant)
    rec = res.records
    assert [r["box"] for r in rec] == [[4.0, 4.0, 16.0, 16.0]] * 3
    assert [r["iou"] for r in rec] == [1.0] * 3
    # top-1 cls: only image 0; top-5 cls: images 0 and 2 (rank 3 <= 5); the box is right everywhere.
    assert [r["correct_top1_cls"] for r in rec] == [True, False, False]
    assert [r["correct_top5_cls"] for r in rec] == [True, False, True]
    assert [r["correct_top1_loc"] for r in rec] == [True, False, False]
    assert [r["correct_top5_loc"] for r in rec] == [True, False, True]  # same class-independent box
    assert [r["correct_gt_known"] for r in rec] == [True, True, True]  # no class check: perfect map -> 100%
    m = res.metrics
    assert m["top1_cls"] == pytest.approx(1 / 3) and m["top5_cls"] == pytest.approx(2 / 3)
    assert m["top1_loc"] == pytest.approx(1 / 3) and m["top5_loc"] == pytest.approx(2 / 3)
    assert m["gt_known_loc"] == 1.0 and m["theta"] == 0.5
    for name, flag in FLAG_METRICS.items():  # every metric is the mean of its flag
        assert m[name] == pytest.approx(np.mean([r[flag] for r in rec]))
    assert m["maxboxacc_v2"] == 1.0  # a 0/1 map equal to the GT box: IoU 1 at every threshold
    assert res.curve == {f"iou_{t}": [1.0] * 10 for t in ("0.3", "0.5", "0.7")}


def test_records_are_plain_json_with_the_store_fields(bench):
    bench.add(3, [(16.0, 16.0, 40.0, 40.0)], RANKED, heat_is(block(4, 4, 16, 16)))
    res = bench.run("paper")
    (rec,) = res.records
    assert set(rec) == set(IMAGE_RECORD_FIELDS)
    assert json.loads(json.dumps(res.records)) == res.records  # JSON round trip, nothing lost
    assert json.dumps(res.metrics) and json.dumps(res.curve)
    assert rec["image_id"] == "img0.png" and type(rec["label"]) is int and rec["label"] == 3
    assert rec["top5"] == [0, 1, 2, 3, 4] and all(type(c) is int for c in rec["top5"])
    # softmax of logits 6..1: p_k = e^(6-k) / (e^6 + ... + e^1), rounded to 6 places
    z = sum(math.exp(j) for j in range(1, 7))
    assert rec["top5_scores"] == [round(math.exp(6 - k) / z, 6) for k in range(5)]
    assert type(rec["iou"]) is float and all(type(v) is float for v in rec["box"])
    flags = [key for key in rec if key.startswith("correct_")]
    assert all(type(rec[key]) is bool for key in flags)
    assert rec["correct_top5_cls"] and not rec["correct_top1_cls"]  # label 3 ranked 4th


def test_tied_scores_rank_the_lower_class_first(bench):
    # All six logits equal (a fresh classifier): the ranking is the class order, as Eq. 3's stable sort.
    bench.add(4, [(16.0, 16.0, 40.0, 40.0)], RANKED, heat_is(block(4, 4, 16, 16)))
    bench.table[0] = (torch.zeros(N), bench.table[0][1])
    (rec,) = bench.run("paper").records
    assert rec["top5"] == [0, 1, 2, 3, 4] and rec["top5_scores"] == [round(1 / 6, 6)] * 5
    assert rec["correct_top5_cls"] and not rec["correct_top1_cls"]


def test_paper_scores_every_gt_box_and_keeps_the_best(bench):
    # Box 1 (0, 0, 12, 12) -> resized (0, 0, 6, 6) -> crop (-4, -4, 2, 2) -> clipped (0, 0, 2, 2).
    # Box 2 (16, 16, 40, 40) -> crop (4, 4, 16, 16): the heatmap is perfect on box 2 only. The authors'
    # test loop scores the image's whole box list and keeps the maximum IoU: box 2 counts.
    bench.add(0, [(0.0, 0.0, 12.0, 12.0), (16.0, 16.0, 40.0, 40.0)], RANKED, heat_is(block(4, 4, 16, 16)))
    (rec,) = bench.run("paper").records
    # "+1" IoU of (4, 4, 16, 16) with (0, 0, 2, 2) is 0; with (4, 4, 16, 16) it is 1
    assert rec["iou"] == 1.0 and rec["correct_gt_known"] and rec["correct_top1_loc"]


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_top5_is_ranked_by_logits_even_when_softmax_ties(bench, protocol):
    # Logits 1e-8 apart: exp(-1e-8) == 1 in float32, so the two probabilities tie exactly and a
    # stable sort of probabilities would put class 0 first; the logits rank class 1 first.
    bench.add(1, [(16.0, 16.0, 40.0, 40.0)], RANKED, heat_is(block(4, 4, 16, 16)))
    logits = torch.tensor([0.0, 1e-8, -1.0, -2.0, -3.0, -4.0])
    probs = logits.softmax(dim=0)
    assert probs[0] == probs[1]  # the premise: a tie after the softmax
    bench.table[0] = (logits, bench.table[0][1])
    (rec,) = bench.run(protocol).records
    assert rec["top5"] == [1, 0, 2, 3, 4] and rec["correct_top1_cls"]


def test_paper_iou_uses_the_authors_plus_one_convention(bench):
    # GT (8, 8, 14, 14) -> resized (4, 4, 7, 7) -> crop (0, 0, 3, 3); predicted block (0, 0, 2, 2).
    # "+1": inter (2-0+1)² = 9, areas 9 and (3-0+1)² = 16 -> 9 / 16 = 0.5625 >= 0.5: correct.
    # (Continuous boxes would give 4 / 9 = 0.444: incorrect.)
    bench.add(0, [(8.0, 8.0, 14.0, 14.0)], RANKED, heat_is(block(0, 0, 2, 2)))
    (rec,) = bench.run("paper").records
    assert rec["box"] == [0.0, 0.0, 2.0, 2.0]
    assert rec["iou"] == pytest.approx(9 / 16) and rec["correct_top1_loc"] and rec["correct_gt_known"]


def test_standard_wsolevaluation_rule_scores_in_the_frame_with_plus_one_iou(bench):
    # 32 x 32 image, 16-frame: GT (0, 0, 6, 6) -> resize_bbox (0, 0, 3, 3). The block of pixels 0..1
    # is one contour, boundingRect (0, 0, w=2, h=2) -> box (0, 0, 2, 2). "+1" IoU: inter 3 x 3 = 9,
    # areas 9 and 4 x 4 = 16 -> 9 / 16 = 0.5625 >= 0.5: correct (wsolevaluation's reading).
    bench.add(0, [(0.0, 0.0, 6.0, 6.0)], RANKED, {0: block(0, 0, 2, 2), **heat_is(block(0, 0, 2, 2))},
              size=(32, 32))
    (rec,) = bench.run("standard").records
    assert rec["box"] == [0.0, 0.0, 4.0, 4.0]  # (0, 0, 2, 2) mapped back to the image, for display
    assert rec["iou"] == pytest.approx(9 / 16) and rec["correct_top1_loc"] and rec["correct_gt_known"]


def test_standard_continuous_rule_iou_is_continuous(bench):
    # The same picture under the continuous box rule: block (0, 0, 2, 2) -> back to (0, 0, 4, 4) in
    # the image. Continuous IoU 16 / 36 = 0.444 < 0.5: incorrect.
    bench.add(0, [(0.0, 0.0, 6.0, 6.0)], RANKED, {0: block(0, 0, 2, 2), **heat_is(block(0, 0, 2, 2))},
              size=(32, 32))
    (rec,) = bench.run("standard", box_rule="continuous").records
    assert rec["box"] == [0.0, 0.0, 4.0, 4.0]
    assert rec["iou"] == pytest.approx(16 / 36) and not rec["correct_top1_loc"] and not rec["correct_gt_known"]


def test_paper_object_cut_by_the_crop_is_clipped(bench):
    # GT (0, 16, 12, 40) -> resized (0, 8, 6, 20) -> crop (-4, 4, 2, 16) -> clipped (0, 4, 2, 16).
    # A map perfect on the visible part: IoU 1. Unclipped, "+1": inter 3 x 13 = 39, areas 39 and
    # 7 x 13 = 91 -> 0.43 (incorrect): the clipping is what makes it correct.
    bench.add(0, [(0.0, 16.0, 12.0, 40.0)], RANKED, heat_is(block(0, 4, 2, 16)))
    (rec,) = bench.run("paper").records
    assert rec["box"] == [0.0, 4.0, 2.0, 16.0] and rec["iou"] == 1.0 and rec["correct_gt_known"]


def test_paper_object_outside_the_crop_cannot_be_found(bench):
    # GT (0, 0, 6, 6) -> resized (0, 0, 3, 3) -> crop (-4, -4, -1, -1) -> clipped (0, 0, 0, 0): no area.
    bench.add(0, [(0.0, 0.0, 6.0, 6.0)], RANKED, heat_is(block(0, 0, 1, 1)))
    res = bench.run("paper")
    assert res.records[0]["iou"] == 0.0 and res.metrics["gt_known_loc"] == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_boxes_at_the_crop_edge(bench, variant):
    # GT (24, 0, 48, 48) -> resized (12, 0, 24, 24) -> crop (8, -4, 20, 20) -> clipped (8, 0, 16, 16).
    bench.add(0, [(24.0, 0.0, 48.0, 48.0)], RANKED, heat_is(block(8, 0, 16, 16)))
    (rec,) = bench.run("paper", variant).records
    assert rec["box"] == [8.0, 0.0, 16.0, 16.0] and rec["iou"] == 1.0 and rec["correct_top1_loc"]


# --------------------------------------------------------------------------- variants' box rules

def _ring(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """(C, C) map: 1 on the one-pixel outline of the box (x0, y0, x1, y1)."""
    m = block(x0, y0, x1, y1)
    m[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = 0.0
    return m


def test_variant_box_rules_largest_component_vs_largest_bounding_box(bench):
    # Solid 5x5 block at (0, 0, 5, 5): 25 pixels, box area 25. Outline of (8, 8, 15, 15): 24 pixels,
    # box area 49. Standard rule (paper variant): most pixels -> the block. Reference rule: largest
    # bounding box -> the outline (θ = 0.5 keeps both; the mean of the kept map, 49/256, keeps both).
    # GT: crop (8, 8, 15, 15) <- original (24, 24, 38, 38).
    both = block(0, 0, 5, 5) + _ring(8, 8, 15, 15)
    bench.add(0, [(24.0, 24.0, 38.0, 38.0)], RANKED, heat_is(both))
    (ref,) = bench.run("paper", "reference").records
    (pap,) = bench.run("paper", "paper").records
    assert ref["box"] == [8.0, 8.0, 15.0, 15.0] and ref["iou"] == 1.0 and ref["correct_top1_loc"]
    assert pap["box"] == [0.0, 0.0, 5.0, 5.0] and pap["iou"] == 0.0 and not pap["correct_top1_loc"]


def test_variant_box_rules_reference_second_cut_at_the_mean(bench):
    # θ = 0.3. Map: 4x4 block P = 1.0 at (0, 0, 4, 4); the rest of rows 0-14 (224 px) = 0.4; row 15 = 0.
    # Both normalisations leave it as is (min 0, max 1). Standard rule: > 0.3 -> rows 0-14 -> box
    # (0, 0, 16, 15). Reference rule: keep > 0.3 x 1, then > mean of the kept map over all 256 px
    # = (16 x 1 + 224 x 0.4) / 256 = 0.4125 -> only P -> box (0, 0, 4, 4).
    # GT: crop (0, 0, 4, 4) <- original (8, 8, 16, 16). Paper "+1" IoU: 25 / (17 x 16) = 0.09.
    heat = torch.full((C, C), 0.4)
    heat[:4, :4] = 1.0
    heat[15, :] = 0.0
    bench.add(0, [(8.0, 8.0, 16.0, 16.0)], RANKED, heat_is(heat))
    (ref,) = bench.run("paper", "reference", theta=0.3).records
    (pap,) = bench.run("paper", "paper", theta=0.3).records
    assert ref["box"] == [0.0, 0.0, 4.0, 4.0] and ref["correct_top1_loc"]
    assert pap["box"] == [0.0, 0.0, 16.0, 15.0] and pap["iou"] == pytest.approx(25 / 272)


# --------------------------------------------------------------------------- standard protocol

def test_standard_box_back_in_original_coordinates_on_a_non_square_image(bench):
    # 64 x 32 image -> 16 x 16: (x, y) -> (x / 4, y / 2). Block cols 3-8, rows 1-12 = crop box
    # (3, 1, 9, 13) -> original (3 x 4, 1 x 2, 9 x 4, 13 x 2) = (12, 2, 36, 26).
    b = block(3, 1, 9, 13)
    bench.add(0, [(12.0, 2.0, 36.0, 26.0)], RANKED, {0: b, **heat_is(b)}, size=(64, 32))
    # Second image: GT (12, 2, 36, 14) is the top half of the box: IoU 288 / 576 = 0.5 exactly -> correct (>=).
    bench.add(0, [(12.0, 2.0, 36.0, 14.0)], RANKED, {0: b, **heat_is(b)}, size=(64, 32))
    res = bench.run("standard", box_rule="continuous")
    assert [r["box"] for r in res.records] == [[12.0, 2.0, 36.0, 26.0]] * 2
    assert [r["iou"] for r in res.records] == [1.0, 0.5]
    assert res.metrics["top1_loc"] == 1.0 and res.metrics["gt_known_loc"] == 1.0


def test_standard_matches_every_gt_box(bench):
    # GT 1 (0, 0, 8, 8), GT 2 (32, 0, 64, 32) on a 64 x 32 image. Block (8, 0, 16, 16) touches the
    # right and top edges -> original (32, 0, 64, 32): IoU 1 with GT 2 only.
    b = block(8, 0, 16, 16)
    bench.add(0, [(0.0, 0.0, 8.0, 8.0), (32.0, 0.0, 64.0, 32.0)], RANKED, {0: b, **heat_is(b)}, size=(64, 32))
    res = bench.run("standard", box_rule="continuous")
    (rec,) = res.records
    assert rec["box"] == [32.0, 0.0, 64.0, 32.0] and rec["iou"] == 1.0
    assert rec["correct_top1_loc"] and rec["correct_gt_known"]
    assert res.metrics["maxboxacc_v2"] == 1.0  # GT boxes in the 16-frame: (0, 0, 2, 4) and (8, 0, 16, 16)
    # wsolevaluation's rule: GT 2 -> resize_bbox (8, 0, 16, 16); the block's contour box is
    # (8, 0, min(16, 15), min(16, 15)) = (8, 0, 15, 15). "+1" areas 8 x 16 = 128 and 9 x 17 = 153,
    # overlap 128: IoU 128 / 153 = 0.84.
    (rec,) = bench.run("standard").records
    assert rec["iou"] == pytest.approx(128 / 153) and rec["correct_gt_known"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_gt_known_paper_from_the_ranking_box_standard_from_the_gt_class_map(bench, variant):
    # 48 x 48 image, GT (24, 24, 48, 48): paper crop (8, 8, 20, 20) clipped to (8, 8, 16, 16);
    # standard x / 3 -> (8, 8, 16, 16). Label 3, ranked 4th (γ: paper 0, reference -0.36).
    # CAMs: class 3 (the label) = B_c = block (8, 8, 16, 16), the right place; class 5 (last) = -B_w,
    # B_w = block (0, 0, 4, 4), the wrong place.
    #   paper variant:     H = 0 x B_c + B_w = B_w.
    #   reference variant: H = -0.36 B_c + B_w; minus its min: B_w 1.36, rest 0.36, B_c 0; min-max:
    #                      B_w 1, rest 0.26, B_c 0. Either rule at θ = 0.5 keeps B_w.
    # Paper protocol: GT-known = the ranking box B_w -> IoU 0. Standard: GT-known = the label's own
    # map B_c -> (24, 24, 48, 48) -> IoU 1; its Top-1 box is B_w -> (0, 0, 12, 12) -> IoU 0.
    bench.add(3, [(24.0, 24.0, 48.0, 48.0)], RANKED, {3: block(8, 8, 16, 16), 5: -block(0, 0, 4, 4)})
    paper = bench.run("paper", variant)
    standard = bench.run("standard", variant)
    assert paper.records[0]["box"] == [0.0, 0.0, 4.0, 4.0] and paper.metrics["gt_known_loc"] == 0.0
    assert standard.records[0]["box"] == [0.0, 0.0, 12.0, 12.0] and standard.records[0]["iou"] == 0.0
    assert standard.metrics["gt_known_loc"] == 1.0
    assert standard.metrics["top5_cls"] == 1.0 and standard.metrics["top5_loc"] == 0.0
    # MaxBoxAccV2: standard sweeps the label's map (B_c, perfect) -> 1; paper sweeps the
    # combinational map: B_w (IoU 0), or for the reference variant the whole image but B_c at
    # t < 0.26 (box (0, 0, 16, 16), IoU 64/256 = 0.25 < 0.3) -> 0 at every level.
    assert standard.metrics["maxboxacc_v2"] == 1.0 and paper.metrics["maxboxacc_v2"] == 0.0


# --------------------------------------------------------------------------- degenerate maps

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("maps", [{}, {0: torch.full((C, C), 3.0)}], ids=["all-zero", "constant"])
def test_empty_and_constant_maps_give_the_fallback_box_never_a_hit(bench, variant, maps):
    # All-zero CAMs, or a constant CAM on the top class (H = γ0 x 3 everywhere): nothing exceeds θ
    # after normalisation -> fallback box (0, 0, 0, 0), IoU 0. The GT is a tiny box at the corner:
    # (8, 8, 8.5, 8.5) -> crop (0, 0, 0.25, 0.25); read with "+1" the fallback would be the pixel
    # (0, 0) with IoU 1 / 1.25² = 0.64 -- the evaluator must still call it a miss.
    bench.add(0, [(8.0, 8.0, 8.5, 8.5)], RANKED, maps)
    for protocol in ("paper", "standard"):
        res = bench.run(protocol, variant)
        (rec,) = res.records
        assert rec["box"] == [0.0, 0.0, 0.0, 0.0] and rec["iou"] == 0.0
        assert not rec["correct_top1_loc"] and not rec["correct_gt_known"] and rec["correct_top1_cls"]
        assert res.metrics["maxboxacc_v2"] == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_map_flat_up_to_rounding_gives_the_fallback_box(bench, variant):
    # The last-ranked class's CAM: 3.0 everywhere but one float step lower in (4, 4, 16, 16), so H = -CAM
    # (heat_is) is one step higher there. Min-max would stretch that rounding step to [0, 1] and find the
    # block exactly on the GT box (16, 16, 40, 40) -> crop (4, 4, 16, 16). The map carries no location: it
    # must give the empty box, as an exactly constant map does.
    cam = torch.full((C, C), 3.0)
    cam[4:16, 4:16] = torch.nextafter(torch.tensor(3.0), torch.tensor(2.0))
    bench.add(0, [(16.0, 16.0, 40.0, 40.0)], RANKED, {RANKED[-1]: cam})
    for protocol in ("paper", "standard"):
        (rec,) = bench.run(protocol, variant).records
        assert rec["box"] == [0.0, 0.0, 0.0, 0.0] and rec["iou"] == 0.0, protocol
        assert not rec["correct_gt_known"] and not rec["correct_top1_loc"]


# --------------------------------------------------------------------------- gallery, loader, misc

def test_gallery_arrays(bench):
    bench.add(0, [(16.0, 16.0, 40.0, 40.0)], RANKED, heat_is(block(4, 4, 16, 16)))
    wanted = bench.add(2, [(24.0, 0.0, 48.0, 48.0)], [1, 0, 2, 3, 4, 5],
                       heat_is(block(8, 0, 16, 16)))
    res = bench.run("paper", gallery_ids=[wanted])
    g = res.gallery
    assert g["image_ids"].tolist() == [wanted] and g["image_ids"].dtype.kind == "U"
    assert g["images"].shape == (1, C, C, 3) and g["images"].dtype == np.uint8
    assert g["images"][0, 0, 0].tolist() == [15, 100, 100]  # key 1: red 10 x 1 + 5, unnormalised
    assert g["heatmaps"].shape == (1, C, C) and g["heatmaps"].dtype == np.uint8
    assert g["heatmaps"][0].max() == 255 and g["heatmaps"][0, 0, 0] == 0 and g["heatmaps"][0, 0, 8] == 255
    assert g["pred_boxes"].dtype == np.float32 and g["pred_boxes"].tolist() == [[8.0, 0.0, 16.0, 16.0]]
    assert g["gt_boxes"].dtype == np.float32 and g["gt_boxes"].tolist() == [[8.0, 0.0, 16.0, 16.0]]
    assert g["labels"].tolist() == [2] and g["top1"].tolist() == [1]
    assert bench.run("paper").gallery is None


def write_one_test_image_cub(root: Path, box: str) -> None:
    """A CUB-layout dataset of 48 x 48 images: image 1 (label 1) is the test image with CUB box ``box``
    ("x y w h"); images 2..N+1 give every class a train image."""
    images = root / "images"
    images.mkdir()
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    for i in range(N + 1):
        Image.new("RGB", (48, 48), (10 * i + 5, 100, 100)).save(images / f"i{i}.png")
        lines["images.txt"].append(f"{i + 1} i{i}.png")
        lines["image_class_labels.txt"].append(f"{i + 1} {max(i, 1)}")
        lines["train_test_split.txt"].append(f"{i + 1} {int(i > 0)}")
        lines["bounding_boxes.txt"].append(f"{i + 1} {box}")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("".join(f"{k} c{k}\n" for k in range(1, N + 1)))


def test_cub_layout_end_to_end_and_training_mode_restored(tmp_path):
    # CUB "x y w h": test image 1 has box 16 16 24 24 = (16, 16, 40, 40) -> crop (4, 4, 16, 16).
    write_one_test_image_cub(tmp_path, "16 16 24 24")
    index = load_cub(tmp_path)
    model = TableModel({0: entry(RANKED, heat_is(block(4, 4, 16, 16)))})
    model.train()
    res = evaluate(model, index.test, cfg(), "paper", CPU)
    assert model.training  # put back as it was
    assert index.test[0].boxes == ((16.0, 16.0, 40.0, 40.0),)
    assert res.records[0]["iou"] == 1.0 and res.metrics["top1_loc"] == 1.0  # class id 1 -> label 0


def test_protocol_transform_and_unknown_protocol():
    assert protocol_transform(cfg(), "paper").frame((48, 48)).crop_offset == (4, 4)  # round((24-16)/2)
    assert protocol_transform(cfg(), "standard").frame((64, 32)).resize_size == (16, 16)
    with pytest.raises(ConfigError, match="protocol = 'both'"):
        protocol_transform(cfg(), "both")


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_decoded_frames_evaluate_exactly_as_the_per_image_path(bench, protocol):
    # train.data_cache: the evaluator reads frames decoded once; records, metrics, sweep and gallery
    # must equal the PIL path's, on non-square images with several GT boxes and a crop that cuts one.
    from kdcicam.data.cache import FrameStore

    b = block(3, 1, 9, 13)
    bench.add(0, [(12.0, 2.0, 36.0, 26.0)], RANKED, {0: b, **heat_is(b)}, size=(64, 32))
    bench.add(1, [(0.0, 0.0, 8.0, 8.0), (32.0, 0.0, 64.0, 32.0)], RANKED, {1: block(8, 0, 16, 16),
                                                                         **heat_is(block(8, 0, 16, 16))}, size=(64, 32))
    bench.add(2, [(0.0, 0.0, 47.0, 20.0)], RANKED, heat_is(block(0, 0, 10, 5)), size=(48, 48))
    frames = FrameStore(CPU)
    kwargs = {"thetas": (0.1, 0.5, 0.9), "gallery_ids": [s.image_id for s in bench.samples]}
    plain = bench.run(protocol, **kwargs)
    cached = bench.run(protocol, frames=frames, **kwargs)
    again = bench.run(protocol, frames=frames, **kwargs)  # the store's frames, reused
    assert len(frames) == 1
    for got in (cached, again):
        assert got.records == plain.records and got.metrics == plain.metrics and got.curve == plain.curve
        assert np.array_equal(got.sweep.ious, plain.sweep.ious) and np.array_equal(got.sweep.boxes, plain.sweep.boxes)
        assert all(np.array_equal(np.asarray(got.gallery[k]), np.asarray(plain.gallery[k])) for k in plain.gallery)


def test_standard_protocol_scores_pxap_when_the_dataset_has_masks(tmp_path):
    # The CUB layout of the test above plus masks.txt (wsolevaluation's OpenImages columns). The
    # test image's object mask covers original pixels 12..47 of 48; OpenCV's nearest resize to 16
    # reads original pixel 3i for frame pixel i: frame 4..15 = the GT class's map block(4, 4, 16, 16).
    # Every object pixel scores 1, every background pixel 0: PxAP 100, pixel F1 and IoU 100 at θ = 1.
    write_one_test_image_cub(tmp_path, "12 12 36 36")
    index = load_cub(tmp_path)
    model = TableModel({0: entry(RANKED, {0: block(4, 4, 16, 16), **heat_is(block(4, 4, 16, 16))})})
    assert "pxap" not in evaluate(model, index.test, cfg(), "standard", CPU).metrics  # no masks.txt
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[12:, 12:] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "i0.png")
    (tmp_path / "masks.txt").write_text("i0.png,masks/i0.png,\n")
    res = evaluate(model, index.test, cfg(), "standard", CPU)
    assert res.metrics["pxap"] == pytest.approx(1.0) and res.metrics["pixel_f1"] == pytest.approx(1.0)
    assert res.metrics["pixel_iou"] == pytest.approx(1.0) and res.curve["pxap_precision"][0] == 1.0
    assert "pxap" not in evaluate(model, index.test, cfg(), "paper", CPU).metrics
