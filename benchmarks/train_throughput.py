"""Training throughput per role: our training step vs a naive re-creation of the authors' loop, same process.

    python benchmarks/train_throughput.py                          # CPU, quick profile's size
    python benchmarks/train_throughput.py --device cuda            # GPU, the paper's size (width 1, 224, batch 6)
    python benchmarks/train_throughput.py --roles student --steps 3 --json out.json

**Ours**: the split decoded once into the uint8 cache (:mod:`kdcicam.data.cache`), batches cropped,
flipped (and RandAugmented when the profile says so) on the device, the trainer's step
(``compute_loss``, backward, Adam; bf16 autocast and channels-last on CUDA as the config says), losses
read back every 20 steps, at the profile's batch size.

**Naive reference loop** (written here, after the authors' released code): fp32 eager, batch 6, a
``Dataset`` that opens each JPEG with PIL and runs torchvision's v1 CPU transforms (Resize, RandomCrop,
RandomHorizontalFlip, [RandAugment], ToTensor, Normalize) per image at every step, ``num_workers``
``--naive-workers`` (0), plain Adam over all parameters, and ``.item()`` on every loss term every
step. Same network, same loss (``compute_loss``), same device.

Both read the same JPEG files (written here: smooth random content at CUB-like sizes for the paper
size, the synthetic benchmark's ~64 px sizes for quick). Reported per role: steady-state images/s
(min / median over ``--repeats``), FLOPs per image of a training step (``FlopCounterMode``: convs,
matmuls, the non-local bmm's; 1 MAC = 2 FLOPs), achieved GFLOP/s and, on a GPU with a known peak,
model FLOP utilisation; peak memory (GPU: ``max_memory_allocated`` per role; CPU: the process's max RSS,
a high-water mark over everything run so far). The cache build time is reported once.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import _common as common
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as tv1

from kdcicam.core.config import RunConfig
from kdcicam.data.base import Sample
from kdcicam.data.cache import CachedBatches, build_cache, split_train_transform
from kdcicam.data.dataset import load_rgb
from kdcicam.data.pixel_steps import IMAGENET_MEAN, IMAGENET_STD
from kdcicam.data.transforms import train_transform
from kdcicam.training.recipes import compute_loss
from kdcicam.training.streams import epoch_order

NAIVE_BATCH = 6  # the authors' batch size
READ_EVERY = 20  # the trainer reads losses back every 20 steps
WARMUP_COMPILED = 3  # untimed steps of a compiled step (compiling, then recording its CUDA graphs)
CUB_SIZES = ((500, 375), (375, 500), (500, 333), (500, 356), (448, 500))  # typical CUB-200-2011 image sizes
SYNTH_SIZES = ((64, 51), (57, 70), (72, 60), (80, 64), (52, 52))  # the synthetic benchmark's jittered ~64 px


class NaiveDataset(Dataset):
    """PIL decode + torchvision v1 transforms per image per step (the authors' data path)."""

    def __init__(self, samples: list[Sample], cfg: RunConfig) -> None:
        self.samples = samples
        d = cfg.data
        steps = [tv1.Resize((d.train_resize, d.train_resize)), tv1.RandomCrop(d.crop), tv1.RandomHorizontalFlip()]
        if d.randaugment:
            steps.append(tv1.RandAugment(d.randaugment_ops, d.randaugment_magnitude))
        steps += [tv1.ToTensor(), tv1.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.transform = tv1.Compose(steps)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.transform(load_rgb(self.samples[i].path)), self.samples[i].label


def naive_images_per_s(cfg: RunConfig, samples: list[Sample], device: torch.device, steps: int,
                       workers: int) -> float:
    """Steady-state images/s of the naive loop (one warm-up step, then ``steps`` timed steps)."""
    model, recipe, teachers = common.make_models(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas)  # plain, unfused
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(NaiveDataset(samples, cfg), batch_size=NAIVE_BATCH, shuffle=True, num_workers=workers,
                        drop_last=True)
    it = iter(loader)
    start = None
    for i in range(steps + 1):
        if i == 1:
            common.sync(device)
            start = time.perf_counter()
        images, labels = next(it)
        images, labels = images.to(device), labels.to(device)
        result = compute_loss(model, images, labels, recipe, cfg.variant, teachers=teachers, generator=generator,
                              loss_cfg=cfg.loss)
        optimizer.zero_grad()
        result.total.backward()
        optimizer.step()
        _logged = {k: v.item() for k, v in result.terms.items()}  # printed every step by the authors' loop
    common.sync(device)
    return steps * NAIVE_BATCH / (time.perf_counter() - start)


def ours_images_per_s(cfg: RunConfig, cache, device: torch.device, steps: int) -> tuple[float, float]:
    """Steady-state images/s of the cached path + trainer step, and the FLOPs of one step per image."""
    model, recipe, teachers = common.make_models(cfg, device)
    cl = device.type == "cuda" and cfg.train.channels_last
    if cl:
        model.to(memory_format=torch.channels_last)
    step = common.step_fn(model, recipe, cfg, device, teachers)
    _geometry, augment = split_train_transform(train_transform(
        cfg.data.train_resize, cfg.data.crop, cfg.data.randaugment, cfg.data.randaugment_ops,
        cfg.data.randaugment_magnitude))
    loader = CachedBatches(cache, epoch_order(len(cache), 0, 0), cfg.train.batch_size, device, augment=augment,
                           seed=0, epoch=0, drop_last=True, channels_last=cl)
    batches = iter(loader)
    pending = []
    start = None
    warm = WARMUP_COMPILED if cfg.train.compile != "off" else 1  # CUDA graphs are recorded after warm-up calls
    for i in range(steps + warm):
        if i == warm:
            common.sync(device)
            start = time.perf_counter()
        batch = next(batches)
        terms = step(batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True))
        pending.append(terms)
        if (i + 1) % READ_EVERY == 0:
            _ = [float(v) for t in pending for v in t.values()]
            pending = []
    _ = [float(v) for t in pending for v in t.values()]
    common.sync(device)
    rate = steps * cfg.train.batch_size / (time.perf_counter() - start)
    batch = loader.batch(0)
    if cfg.train.compile != "off":  # FLOPs of the same maths, counted on the eager step
        eager_cfg = replace(cfg, train=replace(cfg.train, compile="off"))
        model, recipe, teachers = common.make_models(eager_cfg, device)
        step = common.step_fn(model, recipe, eager_cfg, device, teachers)
    with FlopCounterMode(display=False) as counter:
        step(batch["image"].to(device), batch["label"].to(device))
    return rate, counter.get_total_flops() / cfg.train.batch_size


def data_only_images_per_s(cfg: RunConfig, cache, samples: list[Sample], device: torch.device,
                           images: int) -> tuple[float, float]:
    """Images/s of the two data paths alone (no model): cached batches vs PIL + v1 transforms per image."""
    d = cfg.data
    _geometry, augment = split_train_transform(train_transform(d.train_resize, d.crop, d.randaugment,
                                                               d.randaugment_ops, d.randaugment_magnitude))
    loader = CachedBatches(cache, epoch_order(len(cache), 0, 0), cfg.train.batch_size, device, augment=augment,
                           drop_last=True)
    steps = max(1, min(len(loader) - 1, images // cfg.train.batch_size))
    loader.batch(0)  # warm-up (first kernels, cuDNN / allocator set-up), not timed
    ours = common.timed(lambda: [loader.batch(i)["image"] for i in range(1, steps + 1)], device)
    naive_set = NaiveDataset(samples, cfg)
    count = min(len(samples), images)
    naive = common.timed(lambda: [naive_set[i] for i in range(count)], device)
    return steps * cfg.train.batch_size / ours, count / naive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--profile", choices=["smoke", "quick", "paper"], default=None,
                        help="model/input size [default: quick on CPU, paper on CUDA]")
    parser.add_argument("--roles", nargs="+", default=list(common.ROLES), choices=common.ROLES)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per role and path [CPU 4, GPU 20]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-workers", type=int, default=0, help="DataLoader workers of the naive loop")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the utilisation figure")
    parser.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    parser.add_argument("--compile", choices=["off", "default", "reduce-overhead"], default=None,
                        help="train.compile of our path [the profile's]; each repeat compiles anew")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    profile = args.profile or ("paper" if device.type == "cuda" else "quick")
    steps = args.steps or (20 if device.type == "cuda" else 4)
    dataset = "cub" if profile == "paper" else "synthetic"
    base_cfg = common.run_config(profile, "student", dataset=dataset)
    peak = common.peak_tflops(device, args.peak_tflops)
    result = {"benchmark": "train_throughput", "machine": common.machine(device), "profile": profile,
              "batch_ours": base_cfg.train.batch_size, "batch_naive": NAIVE_BATCH, "steps": steps,
              "compile": args.compile or base_cfg.train.compile, "roles": {}}
    m = result["machine"]
    print(f"{m['device']}, {m['threads']} threads, load {m['loadavg_start']}, profile {profile}: "
          f"width {base_cfg.model.width}, {base_cfg.data.crop} px, batch {base_cfg.train.batch_size} (ours) / "
          f"{NAIVE_BATCH} (naive)")
    with tempfile.TemporaryDirectory() as tmp:
        count = (max((steps + WARMUP_COMPILED) * base_cfg.train.batch_size, (steps + 1) * NAIVE_BATCH)
                 + base_cfg.train.batch_size)
        samples = common.write_images(Path(tmp), count, CUB_SIZES if profile == "paper" else SYNTH_SIZES,
                                      base_cfg.model.num_classes)
        geometry, _augment = split_train_transform(train_transform(base_cfg.data.train_resize, base_cfg.data.crop,
                                                                   False))
        start = time.perf_counter()
        cache = build_cache(samples, geometry, device, workers=args.threads)
        build_s = time.perf_counter() - start
        result["cache"] = {"images": len(cache), "seconds": build_s, "images_per_s": len(cache) / build_s,
                           "placement": cache.placement, "bytes": cache.nbytes}
        print(f"cache: {len(cache)} images decoded in {build_s:.2f} s ({len(cache) / build_s:.0f} images/s), "
              f"{cache.placement}")
        data_ours, data_naive = data_only_images_per_s(base_cfg, cache, samples, device, 4 * base_cfg.train.batch_size)
        result["data_only_images_per_s"] = {"ours": data_ours, "naive": data_naive}
        print(f"data path alone: cached batches {data_ours:.0f} images/s, "
              f"PIL + v1 transforms {data_naive:.0f} images/s")
        for role in args.roles:
            cfg = common.run_config(profile, role, dataset=dataset)
            if args.compile is not None:
                cfg = replace(cfg, train=replace(cfg.train, compile=args.compile))
            ours, naive, flops = [], [], 0.0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.repeats):
                rate, flops = ours_images_per_s(cfg, cache, device, steps)
                ours.append(rate)
            mem_ours = common.peak_memory_mb(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.repeats):
                naive_steps = steps * max(1, cfg.train.batch_size // NAIVE_BATCH)  # about as many images as ours
                naive.append(naive_images_per_s(cfg, samples, device, naive_steps, args.naive_workers))
            achieved = flops * common.stats(ours)["median"] / 1e9  # GFLOP/s
            row = {"ours_images_per_s": common.stats(ours), "naive_images_per_s": common.stats(naive),
                   "speedup_median": common.stats(ours)["median"] / common.stats(naive)["median"],
                   "train_gflop_per_image": flops / 1e9, "achieved_gflop_per_s": achieved,
                   "mfu": achieved / (peak * 1e3) if peak else None,
                   "peak_mem_mb_ours": mem_ours, "peak_mem_mb_naive": common.peak_memory_mb(device),
                   "loadavg_end": common.loadavg()}
            result["roles"][role] = row
            mfu = f", MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else ""
            print(f"{role:<12} ours {row['ours_images_per_s']['min']:8.1f} / {row['ours_images_per_s']['median']:8.1f}"
                  f"  naive {row['naive_images_per_s']['min']:8.1f} / {row['naive_images_per_s']['median']:8.1f} img/s"
                  f" (min / median)  x{row['speedup_median']:.2f}   {row['train_gflop_per_image']:.2f} GFLOP/img, "
                  f"{achieved:.1f} GFLOP/s{mfu}, peak mem {mem_ours:.0f} / {row['peak_mem_mb_naive']:.0f} MB"
                  f"  load {row['loadavg_end']}")
    common.dump(result, args.json)


if __name__ == "__main__":
    main()
