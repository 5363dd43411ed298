"""Time ``kdcicam eval-cams`` on N saved CAMs of 224x224, beside wsolevaluation's own algorithm.

    python benchmarks/eval_cams.py                       # 10,000 CAMs, --jobs 1 and 2
    python benchmarks/eval_cams.py --n 300 --opencv      # also wsolevaluation's algorithm (needs cv2)

Writes a wsolevaluation layout under ``--workdir`` (default: a temporary folder, removed after):
``metadata/test/{image_ids,image_sizes,localization}.txt`` and one float32 ``<image_id>.npy`` per
image in nested folders, the CAMs as ``sweep.py`` makes them (smoothed noise upsampled x16,
min-max normalised), 1-3 GT boxes per image of a random size. Then times
:func:`kdcicam.evaluation.saved_cams.score_cams` end to end (reading the files included) with
each ``--jobs``. With ``--opencv``: wsolevaluation's ``BoxEvaluator`` steps (uint8 quantisation,
``cv2.threshold``, ``cv2.findContours``, every contour's box, ``calculate_multiple_iou``) on the
same files in one process, and checks that MaxBoxAccV2 and BoxAcc per IoU level are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sweep import make_cams

from kdcicam.data.wsol_split import read_split
from kdcicam.evaluation.metrics import cam_threshold_grid
from kdcicam.evaluation.saved_cams import score_cams


def write_layout(root: Path, n: int, size: int, seed: int) -> Path:
    """The metadata and CAM folders of n images; returns the split folder."""
    rng = np.random.default_rng(seed)
    split = root / "metadata" / "test"
    split.mkdir(parents=True, exist_ok=True)
    ids, sizes, loc = [], [], []
    for start in range(0, n, 500):
        cams = make_cams(min(500, n - start), size, seed + start)
        for k, cam in enumerate(cams):
            image_id = f"c{(start + k) % 50:03d}/img{start + k:05d}.jpg"
            w, h = (int(v) for v in rng.integers(200, 500, 2))
            ids.append(image_id)
            sizes.append(f"{image_id},{w},{h}")
            for _ in range(int(rng.integers(1, 4))):
                x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
                loc.append(f"{image_id},{x0},{y0},{int(rng.integers(x0, w))},{int(rng.integers(y0, h))}")
            path = root / "cams" / f"{image_id}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, cam)
    (split / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (split / "image_sizes.txt").write_text("\n".join(sizes) + "\n")
    (split / "localization.txt").write_text("\n".join(loc) + "\n")
    return split


def opencv_maxboxacc(root: Path, split: Path, thresholds: np.ndarray, levels=(30, 50, 70)) -> list[float]:
    """wsolevaluation's BoxEvaluator (multi-contour) on the saved CAMs, written from its rules."""
    import cv2

    meta = read_split(split)
    correct = {lv: np.zeros(len(thresholds)) for lv in levels}
    for image_id in meta.image_ids:
        cam = np.load(root / "cams" / f"{image_id}.npy").astype(np.float64)  # t2n
        w, h = meta.sizes[image_id]
        gt = np.array([[int(float(b[0]) * 224 / w), int(float(b[1]) * 224 / h), int(float(b[2]) * 224 / w),
                        int(float(b[3]) * 224 / h)] for b in meta.boxes[image_id]], dtype=float)
        image = np.expand_dims((cam * 255).astype(np.uint8), 2)
        best = []
        for t in thresholds:
            _, mask = cv2.threshold(image, int(t * np.max(image)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if not contours:
                boxes = np.zeros((1, 4))
            else:
                rects = [cv2.boundingRect(c) for c in contours]
                boxes = np.array([[x, y, min(x + bw, 223), min(y + bh, 223)] for x, y, bw, bh in rects], float)
            iw = np.maximum(0, np.minimum(boxes[:, None, 2], gt[None, :, 2])
                            - np.maximum(boxes[:, None, 0], gt[None, :, 0]) + 1)
            ih = np.maximum(0, np.minimum(boxes[:, None, 3], gt[None, :, 3])
                            - np.maximum(boxes[:, None, 1], gt[None, :, 1]) + 1)
            inter = iw * ih
            union = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1))[:, None] \
                + ((gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1))[None, :] - inter
            best.append((inter / np.where(union > 0, union, 1)).max())
        for lv in levels:
            correct[lv] += np.asarray(best) >= lv / 100
    return [float((correct[lv] * 100.0 / len(meta.image_ids)).max()) for lv in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cam-thresholds", type=int, default=100)
    parser.add_argument("--opencv", action="store_true", help="also time wsolevaluation's algorithm (cv2)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="eval_cams_bench_"))
    out: dict = {"n": args.n, "cam_thresholds": args.cam_thresholds, "cpus": os.cpu_count(),
                 "load_before": os.getloadavg()[0], "runs": []}
    try:
        t = time.perf_counter()
        split = write_layout(root, args.n, 224, args.seed)
        print(f"wrote {args.n} CAMs in {time.perf_counter() - t:.1f} s")
        meta = read_split(split)
        for jobs in args.jobs:
            t = time.perf_counter()
            scores = score_cams(root / "cams", meta, cam_thresholds=args.cam_thresholds, jobs=jobs)
            dt = time.perf_counter() - t
            out["runs"].append({"jobs": jobs, "seconds": dt, "maxboxacc_v2": scores.maxboxacc_v2})
            print(f"kdcicam eval-cams, --jobs {jobs}: {dt:.1f} s ({1000 * dt / args.n:.1f} ms/CAM), "
                  f"MaxBoxAccV2 {100 * scores.maxboxacc_v2:.2f}")
        if args.opencv:
            t = time.perf_counter()
            theirs = opencv_maxboxacc(root, split, cam_threshold_grid(args.cam_thresholds))
            dt = time.perf_counter() - t
            ours = [100 * v for v in scores.maxboxacc.values()]
            out["opencv"] = {"seconds": dt, "boxacc": theirs, "ours": ours, "equal": theirs == ours}
            print(f"wsolevaluation's algorithm (cv2, 1 process): {dt:.1f} s; BoxAcc 30/50/70 {theirs} vs ours "
                  f"{ours}: {'equal' if theirs == ours else 'DIFFERENT'}")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    out["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
