"""Several runs in one step (``kdcicam ablate --pack N``): the packed training step for N = 1, 3, 5 and Table 3.

    python benchmarks/gpu_pack.py --device cuda --json pack.json     # paper profile at CUB size (VGG16, 224, batch 6)
    python benchmarks/gpu_pack.py --cpu                              # smoke check here: quick profile, N = 1, 2

For each role and pack size N: N networks of the role (random init; the distilled role with N pairs of random
teachers) trained by :func:`kdcicam.training.packed_step.packed_loss` + one Adam step on random normalised
batches already on the device (the data path is not timed: ``table_eta.py`` and ``train_throughput.py`` time
it). A warm-up step, then ``--steps`` timed steps; the median step gives images/s per run (B / step) and summed
(N B / step), achieved TFLOP/s (training FLOPs per image from ``FlopCounterMode`` on one unpacked step, times
N B / step) and its share of ``--peak-tflops`` (or a known card's dense bf16 peak), and the peak memory.

Table 3 projection (training steps only): the runs of ``kdcicam ablate table3 --profile paper`` (CUB scope,
``--seeds`` seeds, as ``table_eta.py`` plans them) grouped as ``--pack N`` groups them (same role and config
but the seed and the pool), one pack after another:

    T(N) = sum over packs of epochs x floor(N_train / batch) x step_s(role, N)

with N_train = CUB's 5,994 images less the validation share. Validation, the final evaluation and decoding come
on top (``table_eta.py`` prints them); the teachers of a seed must finish before its distilled student.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import _common as common
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdcicam.model.factory import build_model
from kdcicam.training.packed import pack_key
from kdcicam.training.packed_step import Pack, build_pack_optimizer, packed_loss
from kdcicam.training.recipes import TeacherSet, recipe_for

CUB_TRAIN = 5994


def _autocast(cfg, device: torch.device):
    if device.type == "cuda" and cfg.train.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def packed_step_seconds(cfg, n: int, device: torch.device, steps: int) -> tuple[float, float]:
    """Median seconds of one packed step of ``n`` runs of ``cfg``, and the peak memory (MiB)."""
    models = [build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device) for _ in range(n)]
    recipe = recipe_for(cfg.loss, cfg.variant)
    teachers = [None] * n
    if recipe.teachers:
        teachers = [TeacherSet(*(build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device).eval()
                                 for _ in range(2))) for _ in range(n)]
    pack = Pack(models)
    optimizer = build_pack_optimizer(pack, cfg, device)
    pack.train()
    b, side = cfg.train.batch_size, cfg.data.crop
    images = torch.randn(n, b, 3, side, side, device=device)
    labels = torch.randint(cfg.model.num_classes, (n, b), device=device)
    generators = [torch.Generator().manual_seed(i) for i in range(n)]

    def step() -> None:
        with _autocast(cfg, device):
            results = packed_loss(pack, images, labels, recipe, cfg.variant, teachers=teachers, generators=generators,
                                  loss_cfg=cfg.loss, epsilons=[None] * n)
        optimizer.zero_grad(set_to_none=True)
        sum(r.total for r in results).backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up
    times = sorted(common.timed(step, device) for _ in range(steps))
    return times[len(times) // 2], common.peak_memory_mb(device)


def flops_per_image(cfg, device: torch.device) -> float:
    """Training FLOPs per image of one unpacked step of ``cfg`` (forward, backward; FlopCounterMode)."""
    model, recipe, teachers = common.make_models(cfg, device)
    step = common.step_fn(model, recipe, cfg, device, teachers)
    b, side = cfg.train.batch_size, cfg.data.crop
    images = torch.randn(b, 3, side, side, device=device)
    labels = torch.randint(cfg.model.num_classes, (b,), device=device)
    with FlopCounterMode(display=False) as counter:
        step(images, labels)
    return counter.get_total_flops() / b


def table3_packs(seeds: int, size: int) -> list[tuple[str, int, int]]:
    """(role, runs in the pack, epochs) of each pack Table 3's paper plan forms with ``--pack size``."""
    from table_eta import plan_runs

    groups: dict[str, list] = {}
    for run in plan_runs("reference", seeds):
        groups.setdefault(pack_key(run.cfg), []).append(run)
    packs = []
    for runs in groups.values():
        for i in range(0, len(runs), size):
            chunk = runs[i:i + size]
            packs.append((chunk[0].cfg.loss.role, len(chunk), chunk[0].cfg.train.epochs))
    return packs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cpu", action="store_true", help="smoke check on this CPU (quick profile, N = 1, 2)")
    parser.add_argument("--roles", nargs="+", default=list(common.ROLES), choices=common.ROLES)
    parser.add_argument("--packs", nargs="+", type=int, default=None, help="pack sizes [1 3 5; --cpu: 1 2]")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per figure (after one warm-up)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 3], help="Table 3 projections at these seeds")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu else args.device)
    profile, dataset = ("quick", "synthetic") if args.cpu else ("paper", "cub")
    sizes = args.packs or ([1, 2] if args.cpu else [1, 3, 5])
    steps = min(args.steps, 2) if args.cpu else args.steps
    peak = common.peak_tflops(device, args.peak_tflops)
    facts = common.machine(device)
    print(f"{facts['device']}, torch {facts['torch']}, profile {profile} ({dataset}), load {facts['loadavg_start']}")
    rows, step_s = [], {}
    for role in args.roles:
        cfg = common.run_config(profile, role, dataset=dataset)
        cfg = replace(cfg, train=replace(cfg.train, compile="off"))  # a pack trains in eager mode
        flops = flops_per_image(cfg, device)
        for n in sizes:
            seconds, memory = packed_step_seconds(cfg, n, device, steps)
            step_s[(role, n)] = seconds
            b = cfg.train.batch_size
            tflops = flops * n * b / seconds / 1e12
            row = {"role": role, "N": n, "step_ms": seconds * 1e3, "img_s_per_run": b / seconds,
                   "img_s_summed": n * b / seconds, "train_gflop_per_image": flops / 1e9, "achieved_tflop_s": tflops,
                   "share_of_peak": tflops / peak if peak else None, "peak_memory_mib": memory}
            rows.append(row)
            share = f"{100 * row['share_of_peak']:.1f} %" if peak else "n/a"
            print(f"{role:<12} N={n}  step {row['step_ms']:8.1f} ms  {row['img_s_per_run']:8.1f} img/s per run  "
                  f"{row['img_s_summed']:8.1f} summed  {tflops:7.2f} TFLOP/s ({share} of peak)  {memory:8.0f} MiB")
    projections = []
    if not args.cpu and set(args.roles) == set(common.ROLES):
        base = common.run_config("paper", "student", dataset="cub")
        n_train = CUB_TRAIN - math.floor(CUB_TRAIN * base.data.val_fraction)
        steps_per_epoch = n_train // base.train.batch_size
        for seeds in args.seeds:
            for n in sizes:
                # a smaller pack is timed as the smallest measured N that holds it (an upper bound)
                total = sum(epochs * steps_per_epoch * step_s[(role, min(m for m in sizes if m >= size))]
                            for role, size, epochs in table3_packs(seeds, n))
                projections.append({"seeds": seeds, "pack": n, "train_seconds": total})
                print(f"Table 3, {seeds} seed(s), --pack {n}: training steps {total / 60:.1f} min "
                      f"(one pack after another; evaluation on top)")
    common.dump({"machine": facts, "profile": profile, "rows": rows, "table3": projections}, args.json)


if __name__ == "__main__":
    main()
