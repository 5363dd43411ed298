"""Diagnostic (not a speed figure): the ground-truth class's CAM of a stored run on test images it classifies right.

    python benchmarks/cam_grid.py RUN_ID cams.png                     # last checkpoint, 16 images
    python benchmarks/cam_grid.py RUN_ID cams.png --db sqlite:///runs.db --selection gt_known_loc

Top row: the paper-protocol test crop with its GT box (green); bottom row: the raw CAM M of the GT
class (Eq. 1, on X^e), at the network's output resolution, before any normalisation or upsampling.
Only correctly classified images are shown (every 5th test image is looked at), so what is wrong in
the picture is the localization, not the classification. Used for docs/calibration.md.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run id or a unique prefix")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--db", default=None, help="run store [default: $KDCICAM_DB, else ./runs.db]")
    parser.add_argument("--selection", default="last", help="checkpoint: last | top1_loc | gt_known_loc | top1_cls")
    parser.add_argument("-n", type=int, default=16, help="images to show")
    args = parser.parse_args()

    from kdcicam.cli._common import cache_dir, db_url
    from kdcicam.core.config import RunConfig, from_dict
    from kdcicam.data.dataset import WSOLDataset, collate_wsol
    from kdcicam.data.pixel_steps import IMAGENET_MEAN, IMAGENET_STD
    from kdcicam.data.source import open_dataset
    from kdcicam.evaluation.protocols import protocol_transform
    from kdcicam.execution.run_models import load_run_model
    from kdcicam.store import open_store

    cpu = torch.device("cpu")
    with open_store(db_url(args.db), create=False) as store:
        info = store.resolve_run(args.run)
        model = load_run_model(store, info.id, args.selection, cpu).eval()
    cfg = from_dict(RunConfig, info.config)
    index = open_dataset(cfg.data, cache_dir())
    data = WSOLDataset(index.test, protocol_transform(cfg, "paper"))
    batch = collate_wsol([data[i] for i in range(0, len(data), 5)])
    with torch.no_grad():
        out = model(batch["image"], update_pool=False)
    right = (out.logits_e.argmax(1) == batch["label"]).nonzero().flatten()
    print(f"run {info.id[:12]}: {len(right)} of {len(batch['label'])} looked-at test images classified right; "
          f"CAM {tuple(out.cams_e.shape[-2:])}")
    keep = right[:args.n].tolist()
    if not keep:
        raise SystemExit("no correctly classified image to show")
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    fig, axes = plt.subplots(2, len(keep), figsize=(1.6 * len(keep), 3.4), squeeze=False)
    for col, i in enumerate(keep):
        image = (batch["image"][i] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (C, C, 3)
        x0, y0, x1, y1 = batch["boxes"][i][0].tolist()
        axes[0, col].imshow(image)
        axes[0, col].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime"))
        axes[1, col].imshow(out.cams_e[i, int(batch["label"][i])].numpy(), cmap="jet")  # (h, w) raw M of the GT class
        axes[0, col].axis("off")
        axes[1, col].axis("off")
    fig.suptitle(f"run {info.id[:12]} ({info.role}, {info.profile}), checkpoint {args.selection}: GT-class CAM",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
