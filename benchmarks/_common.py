"""Helpers shared by the benchmarks: configs from the registry, the training step, synthetic files, machine facts.

Not a test and not part of the package: imported by ``python benchmarks/X.py`` (its folder is on sys.path).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from kdcicam.core.config import RunConfig, TeacherRefs
from kdcicam.data.base import Sample
from kdcicam.model.factory import build_model
from kdcicam.registry.ablations import load_registry
from kdcicam.registry.resolve import Scope, resolve_config
from kdcicam.training.recipes import Recipe, TeacherSet, compute_loss, recipe_for
from kdcicam.training.schedule import build_optimizer

ROLES = ("student", "cls_teacher", "loc_teacher", "distilled")
# Dense bf16 / tf32 tensor-core peaks (TFLOP/s, no sparsity) of GPUs a run may land on; --peak-tflops overrides.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0,
               "RTX 4090": 165.0, "T4": 65.0}


def run_config(profile: str, role: str, *, dataset: str = "synthetic", variant: str = "reference",
               num_classes: int | None = None, context_pool: bool = True) -> RunConfig:
    """The resolved config of one role under a registry profile (as ``kdcicam ablate`` resolves it)."""
    reg = load_registry()
    classes = num_classes if num_classes is not None else (200 if dataset == "cub" else 10)
    teachers = TeacherRefs(cls_run="cls-teacher", loc_run="loc-teacher") if role == "distilled" else None
    cfg = resolve_config(reg, scope=Scope(dataset=dataset, backbone="vgg16"), profile=profile, variant=variant,
                         role=role, context_pool=context_pool, seed=0, num_classes=classes, teachers=teachers)
    return replace(cfg, model=replace(cfg.model, weights=None))


def make_models(cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module, Recipe, TeacherSet | None]:
    """The network (random init), the role's recipe and, for the distilled role, two random teachers."""
    model = build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device).train()
    recipe = recipe_for(cfg.loss, cfg.variant)
    teachers = None
    if recipe.teachers:
        teachers = TeacherSet(*(build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device).eval()
                                for _ in range(2)))
    return model, recipe, teachers


def step_fn(model: torch.nn.Module, recipe: Recipe, cfg: RunConfig, device: torch.device,
            teachers: TeacherSet | None, *, amp_cpu_bf16: bool = False) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    """One training step exactly as ``train_one_epoch`` runs it (loss, zero_grad, backward, Adam step).

    With ``cfg.train.compile`` other than "off" the model goes through ``torch.compile`` in that mode, as
    the trainer does (the optimizer holds the model's own parameters)."""
    optimizer = build_optimizer(model, cfg, device)
    if cfg.train.compile != "off":
        model = torch.compile(model, mode=cfg.train.compile)
    generator = torch.Generator().manual_seed(0)

    def step(images: torch.Tensor, labels: torch.Tensor) -> dict:
        if device.type == "cuda" and cfg.train.amp:
            ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_cpu_bf16)
        with ctx:
            result = compute_loss(model, images, labels, recipe, cfg.variant, teachers=teachers,
                                  generator=generator, loss_cfg=cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
        return result.terms

    return step


def write_images(folder: Path, count: int, sizes: Sequence[tuple[int, int]], classes: int, seed: int = 0,
                 quality: int = 90) -> list[Sample]:
    """JPEG files of smooth random content at the given (W, H) sizes (cycled), one box each, as Samples."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        low = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        img = PIL.Image.fromarray(low).resize((w, h), PIL.Image.BILINEAR)
        path = folder / f"{i:06d}.jpg"
        img.save(path, quality=quality)
        box = (w * 0.2, h * 0.25, w * 0.7, h * 0.8)
        samples.append(Sample(image_id=f"{i:06d}", path=path, label=i % classes, boxes=(box,), size=(w, h)))
    return samples


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (what `uptime` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset, or the process's max RSS on CPU (a high-water mark)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def machine(device: torch.device) -> dict[str, Any]:
    """Facts printed with every result: device, threads, load, date, versions."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {
        "device": name,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (active spinning)"),
        "loadavg_start": loadavg(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def dump(result: Any, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {path}")
