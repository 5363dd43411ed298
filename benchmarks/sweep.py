"""Time the one-pass threshold sweep against labelling every threshold from scratch.

    python benchmarks/sweep.py                 # 200 CAMs of 224x224, 100 thresholds
    python benchmarks/sweep.py --n 2000 --json sweep.json

The CAMs mimic the model's: a 14x14 map of smoothed noise, upsampled bilinearly x16 (as
``upsample_heatmap``), min-max normalised to [0, 1], float32. Two comparisons, each checked for
identical results:

- sweep: :func:`kdcicam.evaluation.sweep.sweep_components` (one reused workspace) vs
  :func:`kdcicam.evaluation.sweep.sweep_reference` (``scipy.ndimage.label`` + ``find_objects`` per threshold);
- meter: ``MaxBoxAccV2Meter.update`` with ``fast=True`` vs ``fast=False`` (adds validation and
  the IoU with two GT boxes, shared by both).

Times are wall-clock per image, summed over all N images; the fast and reference paths
alternate image by image (after one warm-up call each), so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from kdcicam.evaluation.metrics import MaxBoxAccV2Meter, cam_threshold_grid
from kdcicam.evaluation.sweep import SweepWorkspace, sweep_components, sweep_reference


def make_cams(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size) float32 CAM-like maps in [0, 1]."""
    rng = np.random.default_rng(seed)
    low = ndimage.gaussian_filter(rng.normal(size=(n, 14, 14)), sigma=(0, 1.0, 1.0))  # (n, 14, 14)
    up = F.interpolate(torch.from_numpy(low).float()[:, None], size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0].numpy()  # (n, size, size)
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    return ((up - lo) / (hi - lo)).astype(np.float32)


def make_gt(n: int, size: int, seed: int) -> np.ndarray:
    """(n, 2, 4) two random GT boxes per image."""
    rng = np.random.default_rng(seed + 1)
    x0 = rng.uniform(0, size * 0.6, (n, 2, 2))
    wh = rng.uniform(size * 0.1, size * 0.4, (n, 2, 2))
    return np.concatenate([x0, np.minimum(x0 + wh, size)], axis=2)


def _same(a, b) -> bool:
    return (np.array_equal(a.levels, b.levels) and np.array_equal(a.boxes, b.boxes)
            and np.array_equal(a.pixels, b.pixels))


def run(n: int, size: int, thresholds: int, seed: int) -> dict:
    """Time both comparisons; return the figures."""
    torch.set_num_threads(1)
    cams, gts = make_cams(n, size, seed), make_gt(n, size, seed)
    cutoffs = cam_threshold_grid(thresholds)
    ws = SweepWorkspace()
    sweep_components(cams[0], cutoffs, workspace=ws)  # warm-up (allocates the workspace)
    sweep_reference(cams[0], cutoffs)

    # Interleaved image by image, so both paths see the same load on a shared machine.
    t_fast = t_ref = 0.0
    identical = True
    components = 0
    for cam in cams:
        t = time.perf_counter()
        fast = sweep_components(cam, cutoffs, workspace=ws)
        t_fast += time.perf_counter() - t
        t = time.perf_counter()
        ref = sweep_reference(cam, cutoffs)
        t_ref += time.perf_counter() - t
        identical = identical and _same(fast, ref)
        components += len(fast.levels) / n

    meters = {flag: MaxBoxAccV2Meter(cam_thresholds=thresholds, fast=flag)
              for flag in (True, False)}
    times = dict.fromkeys(meters, 0.0)
    best: dict[bool, list[np.ndarray]] = {flag: [] for flag in meters}
    for meter in meters.values():
        meter.update(cams[0], gts[0])  # warm-up
        meter.reset()
    for cam, gt in zip(cams, gts):
        for flag, meter in meters.items():
            t = time.perf_counter()
            best[flag].append(meter.update(cam, gt))  # (T,)
            times[flag] += time.perf_counter() - t
    max_diff = float(np.abs(np.stack(best[True]) - np.stack(best[False])).max())
    same_metrics = meters[True].compute() == meters[False].compute()

    return {
        "n": n, "size": size, "thresholds": thresholds, "seed": seed,
        "components_per_image": components,
        "sweep": {"fast_ms_per_image": 1e3 * t_fast / n, "reference_ms_per_image": 1e3 * t_ref / n,
                  "speedup": t_ref / t_fast, "identical": identical},
        "meter": {"fast_ms_per_image": 1e3 * times[True] / n,
                  "reference_ms_per_image": 1e3 * times[False] / n,
                  "speedup": times[False] / times[True], "max_abs_diff_best_iou": max_diff,
                  "identical_metrics": same_metrics,
                  "maxboxacc_v2": meters[True].compute()["maxboxacc_v2"]},
        "machine": {"cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of CAMs")
    parser.add_argument("--size", type=int, default=224, help="CAM side in pixels")
    parser.add_argument("--thresholds", type=int, default=100, help="CAM thresholds 0, 1/T, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    out = run(args.n, args.size, args.thresholds, args.seed)
    for name in ("sweep", "meter"):
        r = out[name]
        print(f"{name:5s}: fast {r['fast_ms_per_image']:.2f} ms/image, reference "
              f"{r['reference_ms_per_image']:.2f} ms/image, speedup {r['speedup']:.1f}x")
    print(f"identical sweeps: {out['sweep']['identical']}; max |diff| of best IoU: "
          f"{out['meter']['max_abs_diff_best_iou']}; identical metrics: "
          f"{out['meter']['identical_metrics']}; "
          f"{out['components_per_image']:.0f} components/image")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
