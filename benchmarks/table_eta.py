"""Projected wall time of ``kdcicam ablate table3 --backbone vgg16 --profile paper`` on this device.

    python benchmarks/table_eta.py                     # this machine's CPU (the answer is days)
    python benchmarks/table_eta.py --device cuda --steps 10 --json eta.json

The plan is the real one (registry + planner, paper profile, CUB/VGG16 settings: width 1, 224 crop from
a 256 resize with RandAugment, batch 6, 100 epochs, 200 classes); the data is CUB-sized synthetic:
each run's training step is timed on random uint8 frames held in the tensor cache (a warm-up step,
then ``--steps`` steps), the evaluation forward per image at the test crop, and the one-off decoding
of the splits from JPEGs of CUB-like sizes. Then, per run,

    ETA = decode(train + val + test x 2 protocols)
        + epochs x (floor(N_train / batch) x step_s(role) + N_val x eval_s)    # train + per-epoch validation
        + checkpoints x 2 protocols x N_test x eval_s                          # final test evaluation

with CUB-200-2011's N = 5,994 train images (of which ``data.val_fraction`` is held out for
validation, ~600) and N_test = 5,794, and ``--checkpoints`` distinct checkpoint epochs evaluated at
the end (last + up to 3 best-by-criterion; default 4, the most). The sum is the table one run after
another; "side by side" is its critical path when every run has its own worker (``ablate --jobs N``)
and none slows another (an upper bound on the gain: at batch 6 the GPU idles most of each step).
``--compile reduce-overhead`` times the step as ``train.compile`` would run it (CUDA graphs).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import _common as common
import torch

from kdcicam.data.base import DatasetIndex
from kdcicam.data.cache import CachedBatches, ImageCache, build_cache, split_train_transform
from kdcicam.data.transforms import TestTransform, train_transform
from kdcicam.execution.plan import make_plan
from kdcicam.model.factory import build_model
from kdcicam.registry.ablations import load_registry
from kdcicam.registry.resolve import Scope

CUB_TRAIN, CUB_TEST, CUB_CLASSES = 5994, 5794, 200
CUB_SIZES = ((500, 375), (375, 500), (500, 333), (500, 356), (448, 500))


def plan_runs(variant: str, seeds: int):
    """The runs of Table 3 (vgg16, paper profile, CUB scope), teachers included, as the CLI plans them."""
    reg = load_registry()
    index = DatasetIndex(name="cub", root=Path("/cub-sized"), classes=tuple(f"c{i}" for i in range(CUB_CLASSES)),
                         train=(), test=(), fingerprint="cub-sized-synthetic")
    plan = make_plan(reg, ["table3"], scope=Scope(dataset="cub", backbone="vgg16", root="/cub-sized"),
                     profile="paper", variant=variant, seeds=list(range(seeds)), open_data=lambda _cfg: index)
    return plan.runs


def random_cache(n: int, side: int, classes: int, device: torch.device) -> ImageCache:
    """``n`` random uint8 frames as an ImageCache (one box each), on the device like a cache that fits."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen).to(device)
    box = torch.tensor([[side * 0.2, side * 0.2, side * 0.8, side * 0.8]])
    return ImageCache(images=images, labels=torch.arange(n) % classes, boxes=box.expand(n, 1, 4).clone(),
                      orig_boxes=box.expand(n, 1, 4).clone(), num_boxes=torch.ones(n, dtype=torch.long),
                      orig_sizes=torch.full((n, 2), side), image_ids=tuple(map(str, range(n))),
                      placement="device" if device.type == "cuda" else "host")


def step_seconds(cfg, device: torch.device, steps: int) -> float:
    """Seconds per training step of one run's config (cached batches + the trainer's step)."""
    model, recipe, teachers = common.make_models(cfg, device)
    if device.type == "cuda" and cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    step = common.step_fn(model, recipe, cfg, device, teachers)
    d = cfg.data
    _geometry, augment = split_train_transform(train_transform(d.train_resize, d.crop, d.randaugment,
                                                               d.randaugment_ops, d.randaugment_magnitude))
    batch = cfg.train.batch_size
    warm = 3 if cfg.train.compile != "off" else 1  # compiling, then recording CUDA graphs, is not timed
    cache = random_cache(batch * (steps + warm), d.train_resize, cfg.model.num_classes, device)
    loader = CachedBatches(cache, range(len(cache)), batch, device, augment=augment, drop_last=True,
                           channels_last=device.type == "cuda" and cfg.train.channels_last)
    times = []
    for i, b in enumerate(loader):
        t = common.timed(lambda: step(b["image"], b["label"].to(device)), device)
        if i >= warm:
            times.append(t)
    return sorted(times)[len(times) // 2]


def eval_seconds_per_image(cfg, device: torch.device, batch: int = 6, repeats: int = 2) -> float:
    model = build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device).eval()
    x = torch.randn(batch, 3, cfg.eval.test_crop, cfg.eval.test_crop, device=device)
    with torch.no_grad():
        model(x, update_pool=False)
        best = min(common.timed(lambda: model(x, update_pool=False), device) for _ in range(repeats))
    return best / batch


def decode_seconds_per_image(cfg, device: torch.device, count: int = 12) -> float:
    """One-off cache build cost per image: JPEG decode + resize at CUB-like sizes."""
    with tempfile.TemporaryDirectory() as tmp:
        samples = common.write_images(Path(tmp), count, CUB_SIZES, CUB_CLASSES)
        start = time.perf_counter()
        build_cache(samples, TestTransform(resize=cfg.data.train_resize), device, workers=torch.get_num_threads())
        return (time.perf_counter() - start) / count


def human(seconds: float) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{int(days)} d {int(hours)} h {int(rest // 60)} min" if days else f"{int(hours)} h {int(rest // 60)} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["reference", "paper"], default="reference")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--checkpoints", type=int, default=4, help="distinct checkpoint epochs evaluated at the end")
    parser.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    parser.add_argument("--compile", choices=["off", "default", "reduce-overhead"], default=None,
                        help="train.compile of every run [the profile's]")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    runs = plan_runs(args.variant, args.seeds)
    result = {"benchmark": "table_eta", "machine": common.machine(device), "variant": args.variant,
              "seeds": args.seeds, "runs": []}
    print(f"{result['machine']['device']}, {args.threads} threads, load {result['machine']['loadavg_start']}: "
          f"table3 / vgg16 / paper profile, {len(runs)} runs, CUB-sized synthetic data")
    first = runs[0].cfg
    decode_s = decode_seconds_per_image(first, device)
    eval_s = eval_seconds_per_image(replace(first, model=replace(first.model, weights=None)), device)
    measured: dict[tuple, float] = {}
    own_s: dict[str, float] = {}
    finish_s: dict[str, float] = {}  # runs are planned teachers first
    total = 0.0
    for run in runs:
        cfg = replace(run.cfg, model=replace(run.cfg.model, weights=None))
        if args.compile is not None:
            cfg = replace(cfg, train=replace(cfg.train, compile=args.compile))
        key = (cfg.loss.role, cfg.model.context_pool)  # seeds and teacher ids do not change the cost
        if key not in measured:
            measured[key] = step_seconds(cfg, device, args.steps)
        n_val = sum(max(1, math.floor(cfg.data.val_fraction * (CUB_TRAIN / CUB_CLASSES) + 0.5))
                    for _ in range(CUB_CLASSES)) if cfg.data.val_fraction > 0 else 0
        n_train = CUB_TRAIN - n_val
        steps_per_epoch = n_train // cfg.train.batch_size
        train_s = cfg.train.epochs * steps_per_epoch * measured[key]
        val_s = cfg.train.epochs * n_val * eval_s
        test_s = args.checkpoints * 2 * CUB_TEST * eval_s
        build_s = (CUB_TRAIN + 2 * CUB_TEST) * decode_s
        run_s = build_s + train_s + val_s + test_s
        total += run_s
        own_s[run.run_id] = run_s
        # side by side (ablate --jobs N, N >= runs): a run ends after its teachers' ends plus its own time
        finish_s[run.run_id] = max((finish_s[d] for d in run.deps), default=0.0) + run_s
        row = {"run_id": run.run_id[:12], "role": cfg.loss.role, "context_pool": cfg.model.context_pool,
               "epochs": cfg.train.epochs, "batch": cfg.train.batch_size, "n_train": n_train, "n_val": n_val,
               "step_s": measured[key], "train_s": train_s, "val_s": val_s, "test_s": test_s, "decode_s": build_s,
               "total_s": run_s}
        result["runs"].append(row)
        print(f"  {row['run_id']} {row['role']:<12} pool={str(row['context_pool']):<5} {row['step_s']:7.2f} s/step "
              f"x {steps_per_epoch} steps x {row['epochs']} epochs = {human(train_s)} training, "
              f"{human(val_s + test_s)} evaluation -> {human(run_s)}", flush=True)
    critical = max(finish_s.values())
    result.update(total_s=total, critical_path_s=critical, eval_s_per_image=eval_s, decode_s_per_image=decode_s,
                  compile=args.compile or first.train.compile, loadavg_end=common.loadavg())
    print(f"projected table3 / vgg16 / paper on {result['machine']['device']} ({args.threads} threads): "
          f"{human(total)} ({total / 3600:.1f} h); eval {1e3 * eval_s:.1f} ms/image, decode {1e3 * decode_s:.1f} "
          f"ms/image; load at end {result['loadavg_end']}")
    print(f"side by side (ablate --jobs {len(runs)}, if the runs do not slow each other): {human(critical)} "
          f"(the longest teacher + the distilled student)")
    common.dump(result, args.json)


if __name__ == "__main__":
    main()
