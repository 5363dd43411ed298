"""Parameter counts and FLOPs per image of the CI-CAM network, at the paper's settings and at reduced ones.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, the non-local
attention bmm's; 1 multiply-add = 2 FLOPs; element-wise ops, softmax and BN are not counted) for one image:
``forward`` is an eval-mode pass, ``train step`` a train-mode forward (pool update included) plus the
backward of CE(S) + CE(S^e).

    python benchmarks/model_cost.py            # table
    python benchmarks/model_cost.py --json     # JSON list, one object per setting
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kdcicam.core.config import ModelConfig
from kdcicam.model.factory import build_model


@dataclass(frozen=True)
class Setting:
    label: str
    cfg: ModelConfig
    input_size: int


SETTINGS: tuple[Setting, ...] = (
    Setting("vgg16 / CUB (paper)", ModelConfig("vgg16", 200, 1.0, 16, 4), 224),
    Setting("inceptionv3 / CUB (paper)", ModelConfig("inceptionv3", 200, 1.0, 16, 3), 299),
    Setting("vgg16 / ILSVRC (paper)", ModelConfig("vgg16", 1000, 1.0, 16, 3), 224),
    Setting("vgg16 w0.125 s4 64px (CPU)", ModelConfig("vgg16", 10, 0.125, 4, 4), 64),
    Setting("vgg16 w0.25 s4 64px (CPU)", ModelConfig("vgg16", 10, 0.25, 4, 4), 64),
    Setting("vgg16 w0.125 s8 64px (CPU)", ModelConfig("vgg16", 10, 0.125, 8, 4), 64),
    Setting("inceptionv3 w0.125 96px (CPU)", ModelConfig("inceptionv3", 10, 0.125, 16, 3), 96),
)


def measure(setting: Setting, variant: str) -> dict:
    """Parameters, feature size and FLOPs of one setting (batch of 1)."""
    model = build_model(setting.cfg, variant, setting.input_size)
    params = {
        "total": sum(p.numel() for p in model.parameters()),
        "nonlocal": sum(p.numel() for p in model.backbone.nonlocal_blocks.parameters()),
        "head": sum(p.numel() for p in model.classifier.parameters()),
        "context_conv": sum(p.numel() for p in model.context_conv.parameters()) if model.context_conv else 0,
    }
    images = torch.randn(1, 3, setting.input_size, setting.input_size)
    labels = torch.zeros(1, dtype=torch.long)
    model.eval()
    start = time.perf_counter()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(images)
    seconds = time.perf_counter() - start
    forward = counter.get_total_flops()
    nonlocal_flops = sum(sum(v.values()) for k, v in counter.get_flop_counts().items()
                         if k.split(".")[-2:-1] == ["nonlocal_blocks"])  # one entry per block
    model.train()
    with FlopCounterMode(display=False) as counter:
        out_train = model(images, labels)
        (F.cross_entropy(out_train.logits, labels) + F.cross_entropy(out_train.logits_e, labels)).backward()
    return {
        "setting": setting.label,
        "variant": variant,
        "backbone": setting.cfg.backbone,
        "width": setting.cfg.width,
        "output_stride": setting.cfg.output_stride,
        "nonlocal_blocks": setting.cfg.nonlocal_blocks,
        "num_classes": setting.cfg.num_classes,
        "input_size": setting.input_size,
        "feature_size": list(out.cams.shape[-2:]),
        "feature_channels": int(model.backbone.out_channels),
        "params": params,
        "forward_flops": forward,
        "nonlocal_forward_flops": nonlocal_flops,
        "train_step_flops": counter.get_total_flops(),
        "cpu_forward_seconds": round(seconds, 3),  # one eval pass under the counter, this machine's threads
    }


def format_table(rows: list[dict]) -> str:
    header = (f"{'setting':32} {'in':>4} {'map':>6} {'C':>4} {'params M':>9} {'NL params M':>11} "
              f"{'fwd GFLOP':>10} {'NL GFLOP':>9} {'train GFLOP':>11}")
    lines = [header, "-" * len(header)]
    for r in rows:
        h, w = r["feature_size"]
        lines.append(
            f"{r['setting']:32} {r['input_size']:>4} {f'{h}x{w}':>6} {r['feature_channels']:>4} "
            f"{r['params']['total'] / 1e6:>9.3f} {r['params']['nonlocal'] / 1e6:>11.3f} "
            f"{r['forward_flops'] / 1e9:>10.3f} {r['nonlocal_forward_flops'] / 1e9:>9.3f} "
            f"{r['train_step_flops'] / 1e9:>11.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--variant", default="reference", choices=["paper", "reference"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--only", default=None, help="measure only settings whose label contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure(s, args.variant) for s in SETTINGS if args.only is None or args.only in s.label]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))


if __name__ == "__main__":
    main()
