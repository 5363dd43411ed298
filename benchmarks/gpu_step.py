"""Where a GPU training step at the paper's size spends its time, and what each fast path is worth.

    python benchmarks/gpu_step.py --json gpu_step.json              # on a CUDA machine
    python benchmarks/gpu_step.py --device cpu --size 64 --steps 2  # plumbing check on a CPU

The step is the trainer's (compute_loss, zero_grad, backward, fused Adam) on one fixed device batch
(VGG16 width 1, 224 px, batch 6, the paper profile), so the data path is out of the figure; it is timed
on its own (cached frames -> crop / flip / RandAugment on the device, per batch). Variants, each its own
model with the same initial weights:

- ``fp32``: no autocast, contiguous tensors (the naive loop's arithmetic);
- ``bf16``: bf16 autocast;
- ``bf16_cl``: bf16 autocast + channels-last (the trainer's default on a GPU);
- ``compile`` / ``graphs`` (``--compile``): ``bf16_cl`` through ``torch.compile`` in its default mode /
  ``mode="reduce-overhead"`` (CUDA graphs); warm-up (compiling) time reported separately.

For each variant: images/s over ``--steps`` steps (host synchronised only at both ends, losses not read
back), the host time to issue one step, and (``--profile``) the GPU's busy time per step from
torch.profiler: a step whose wall time is far above its GPU time is bound by kernel launches, not maths.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import _common as common
import torch
from table_eta import random_cache

from kdcicam.data.cache import CachedBatches, split_train_transform
from kdcicam.data.transforms import train_transform
from kdcicam.training.streams import epoch_order

VARIANTS = ("fp32", "bf16", "bf16_cl", "compile", "graphs")


def variant_config(role: str, variant: str, size: int | None):
    cfg = common.run_config("paper", role)
    amp = variant != "fp32"
    cl = variant not in ("fp32", "bf16")
    cfg = replace(cfg, train=replace(cfg.train, amp=amp, channels_last=cl))
    if size is not None:
        cfg = replace(cfg, data=replace(cfg.data, crop=size, train_resize=size + size // 7))
    return cfg


def _device_us(event) -> float:
    """An averaged profiler event's self time on the GPU, in µs.

    Newer torch names the field ``self_device_time_total``, older ``self_cuda_time_total``.
    """
    return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0))


def time_variant(role: str, variant: str, device: torch.device, steps: int, warmup: int, size: int | None,
                 profile: bool) -> dict:
    cfg = variant_config(role, variant, size)
    torch.manual_seed(0)
    model, recipe, teachers = common.make_models(cfg, device)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    wrapped = model
    if variant in ("compile", "graphs"):
        wrapped = torch.compile(model, mode="reduce-overhead" if variant == "graphs" else "default")
    step = common.step_fn(wrapped, recipe, cfg, device, teachers)
    gen = torch.Generator().manual_seed(1)
    batch = cfg.train.batch_size
    images = torch.randn(batch, 3, cfg.data.crop, cfg.data.crop, generator=gen).to(device).contiguous(memory_format=fmt)
    labels = torch.randint(cfg.model.num_classes, (batch,), generator=gen).to(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step(images, labels)
    common.sync(device)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    issue = []
    for _ in range(steps):
        t = time.perf_counter()
        step(images, labels)
        issue.append(time.perf_counter() - t)
    common.sync(device)
    wall = (time.perf_counter() - start) / steps
    row = {"role": role, "variant": variant, "images_per_s": batch / wall, "ms_per_step": 1e3 * wall,
           "host_issue_ms_per_step": 1e3 * sorted(issue)[len(issue) // 2], "warmup_s": warm_s}
    if profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step(images, labels)
            common.sync(device)
        events = prof.key_averages()
        row["gpu_busy_ms_per_step"] = sum(_device_us(e) for e in events) / 1e3 / 3
        row["kernels_per_step"] = sum(e.count for e in events if _device_us(e) > 0) / 3
        top = sorted(events, key=_device_us, reverse=True)[:8]
        row["top_gpu_ops"] = [{"op": e.key, "ms_per_step": _device_us(e) / 3e3, "calls_per_step": e.count / 3}
                              for e in top]
    return row


def data_path_images_per_s(device: torch.device, batches: int, size: int | None) -> float:
    """Cached frames -> the paper's train augmentation (crop, flip, RandAugment) on the device, per batch."""
    cfg = variant_config("student", "bf16_cl", size)
    d = cfg.data
    _geometry, augment = split_train_transform(train_transform(d.train_resize, d.crop, d.randaugment,
                                                               d.randaugment_ops, d.randaugment_magnitude))
    b = cfg.train.batch_size
    cache = random_cache(b * (batches + 2), d.train_resize, cfg.model.num_classes, device)
    loader = CachedBatches(cache, epoch_order(len(cache), 0, 0), b, device, augment=augment, drop_last=True,
                           channels_last=device.type == "cuda")
    loader.batch(0)
    loader.batch(1)
    common.sync(device)
    start = time.perf_counter()
    for i in range(2, batches + 2):
        loader.batch(i)
    common.sync(device)
    return batches * b / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--roles", nargs="+", default=["student", "distilled"], choices=common.ROLES)
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16_cl"], choices=VARIANTS)
    parser.add_argument("--compile", action="store_true", help="also time compile / graphs (student only)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=None, help="crop side instead of the paper's 224")
    parser.add_argument("--profile", action="store_true", help="GPU busy time and top kernels per step")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as kdcicam.core.runtime sets it outside deterministic mode
    result = {"benchmark": "gpu_step", "machine": common.machine(device), "rows": []}
    plan = [(role, v) for role in args.roles for v in args.variants]
    if args.compile:
        plan += [("student", "compile"), ("student", "graphs")]
    for role, variant in plan:
        try:
            row = time_variant(role, variant, device, args.steps, args.warmup, args.size, args.profile)
        except Exception as exc:  # a variant that fails (e.g. compile on a bare image) is reported, not fatal
            row = {"role": role, "variant": variant, "error": f"{type(exc).__name__}: {exc}"[:300]}
        result["rows"].append(row)
        if "error" in row:
            print(f"{role:<12} {variant:<8} failed: {row['error']}", flush=True)
            continue
        extra = ""
        if "gpu_busy_ms_per_step" in row:
            extra = f"  GPU busy {row['gpu_busy_ms_per_step']:6.2f} ms, {row['kernels_per_step']:.0f} kernels"
        print(f"{role:<12} {variant:<8} {row['images_per_s']:8.1f} img/s  {row['ms_per_step']:7.2f} ms/step  "
              f"host issue {row['host_issue_ms_per_step']:6.2f} ms  warm-up {row['warmup_s']:5.1f} s{extra}",
              flush=True)
        for op in row.get("top_gpu_ops", [])[:5]:
            print(f"      {op['op'][:60]:<60} {op['ms_per_step']:7.3f} ms  {op['calls_per_step']:5.0f} calls")
    rate = data_path_images_per_s(device, 20, args.size)
    result["data_path_images_per_s"] = rate
    print(f"data path alone (cached frames, crop/flip/RandAugment on {device.type}): {rate:.0f} img/s", flush=True)
    common.dump(result, args.json)


if __name__ == "__main__":
    main()
