"""Where a CPU training step spends its time, and which CPU settings speed it up without changing the maths.

    python benchmarks/cpu_step.py                      # quick profile's model, student + loc teacher
    python benchmarks/cpu_step.py --profile            # + torch.profiler's top ops per role
    python benchmarks/cpu_step.py --compile --json cpu_step.json   # + torch.compile (minutes to compile)

The step is the trainer's (compute_loss, zero_grad, backward, Adam step) at the quick profile's size
(VGG16 width 0.125, 64 px, 4 non-local blocks, batch 32; the output stride is the profile's unless
``--stride`` says otherwise) on random tensors (the data path is timed by train_throughput.py).
Variants, each its own model with the same initial weights:

- ``eager``: fp32, contiguous, ``torch.get_num_threads()`` threads (2 here);
- ``threads1``: one intra-op thread;
- ``channels_last``: model and input in NHWC (oneDNN's preferred layout); ``threads1_cl``: both;
- ``no_mkldnn``: oneDNN convolutions disabled (what mkldnn is worth);
- ``bf16``: CPU autocast to bfloat16 (changes the numbers; listed to be ruled out);
- ``logits_only`` (teacher roles): the fore/back passes compute only the entangled logits they use
  (backbone -> GAP -> classifier) instead of the full CI-CAM forward (same values, checked);
- ``compile`` (``--compile``): ``torch.compile`` default mode; compile time reported separately
  ("reduce-overhead" adds CUDA graphs, which do nothing on a CPU).

Variants are timed round-robin, ``--repeats`` times ``--steps`` steps each, so every variant sees the
same machine load; min and median images/s are reported with the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import replace

import _common as common
import torch
from torch import nn

from kdcicam.model.output import CICAMOutput

TEACHER_ROLES = ("cls_teacher", "loc_teacher")
VARIANTS = ("eager", "threads1", "channels_last", "threads1_cl", "no_mkldnn", "bf16", "logits_only", "compile")
DEFAULT_VARIANTS = {  # the slow, ruled-out variants (no_mkldnn, bf16) are timed on the student only
    "student": ("eager", "threads1", "channels_last", "threads1_cl", "no_mkldnn", "bf16"),
    "cls_teacher": ("eager", "threads1", "threads1_cl", "logits_only"),
    "loc_teacher": ("eager", "threads1", "threads1_cl", "logits_only"),
    "distilled": ("eager", "threads1", "threads1_cl"),
}


class LogitsOnlyExtraPasses(nn.Module):
    """Wraps CI-CAM: a pass with ``update_pool=False`` returns only the entangled logits (GAP + classifier).

    In a teacher recipe those passes are the fore/back passes, which read ``.logits`` only; the CAMs and
    the enhanced branch they would also compute are dropped. Not for distilled roles (teacher passes
    read ``cams_e``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, labels=None, update_pool=None) -> CICAMOutput:
        if update_pool is False:
            logits = self.model.classifier(self.model.backbone(images).mean(dim=(2, 3)))  # (B, n)
            return CICAMOutput(logits=logits, logits_e=logits, cams=None, cams_e=None)  # type: ignore[arg-type]
        return self.model(images, labels=labels, update_pool=update_pool)


def quick_config(role: str, stride: int | None):
    """The quick profile's config of ``role``, with the output stride overridden when given."""
    cfg = common.run_config("quick", role)
    if stride is not None:
        cfg = replace(cfg, model=replace(cfg.model, output_stride=stride))
    return cfg


def build_variant(name: str, role: str, device: torch.device, threads: int, stride: int | None = None):
    """(step callable, batch size) of one variant; every variant starts from the same weights."""
    cfg = quick_config(role, stride)
    torch.manual_seed(0)
    model, recipe, teachers = common.make_models(cfg, device)
    wrapped: nn.Module = model
    fmt = torch.contiguous_format
    if name in ("channels_last", "threads1_cl"):
        model.to(memory_format=torch.channels_last)
        fmt = torch.channels_last
    if name == "logits_only":
        wrapped = LogitsOnlyExtraPasses(model)
    if name == "compile":
        wrapped = torch.compile(model)
    step = common.step_fn(wrapped, recipe, cfg, device, teachers, amp_cpu_bf16=name == "bf16")
    batch = cfg.train.batch_size
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, cfg.data.crop, cfg.data.crop, generator=gen).contiguous(memory_format=fmt)
    labels = torch.randint(cfg.model.num_classes, (batch,), generator=gen)

    def run() -> None:
        torch.set_num_threads(1 if name.startswith("threads1") else threads)
        flags = torch.backends.mkldnn.flags(enabled=False) if name == "no_mkldnn" else contextlib.nullcontext()
        with flags:
            step(images, labels)
        torch.set_num_threads(threads)

    return run, images.shape[0]


def check_logits_only(device: torch.device, stride: int | None) -> float:
    """Max |difference| of the fore-pass logits between the full forward and the logits-only one."""
    cfg = quick_config("loc_teacher", stride)
    model, _recipe, _t = common.make_models(cfg, device)
    x = torch.randn(8, 3, cfg.data.crop, cfg.data.crop)
    with torch.no_grad():
        full = model(x, update_pool=False).logits
        short = LogitsOnlyExtraPasses(model)(x, update_pool=False).logits
    return float((full - short).abs().max())


def profile_role(role: str, device: torch.device, threads: int, top: int, stride: int | None) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    run, _batch = build_variant("eager", role, device, threads, stride)
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
        run()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    out = [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / 2, "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / 2} for e in rows[:top]]
    print(f"\n{role}: top {top} ops by self CPU time ({total / 2e6:.2f} s per step)")
    for r in out:
        print(f"  {r['op']:<45} {r['self_ms_per_step']:9.1f} ms  {100 * r['share']:5.1f}%  "
              f"{r['calls_per_step']:5.0f} calls")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", nargs="+", default=["student", "loc_teacher"], choices=common.ROLES)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                        help="variants to time [default: per role, see DEFAULT_VARIANTS; compile only with --compile]")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops per role")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--stride", type=int, choices=[4, 8, 16], default=None,
                        help="override model.output_stride [default: the quick profile's]")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    m = quick_config("student", args.stride)
    setting = {"width": m.model.width, "output_stride": m.model.output_stride, "input": m.data.crop,
               "nonlocal_blocks": m.model.nonlocal_blocks, "batch": m.train.batch_size}
    result = {"benchmark": "cpu_step", "machine": common.machine(device), "setting": setting, "roles": {}}
    print(f"{result['machine']['device']}, {args.threads} threads, OMP_WAIT_POLICY "
          f"{result['machine']['omp_wait_policy']}, load {result['machine']['loadavg_start']}; {setting}")
    result["logits_only_max_abs_diff"] = check_logits_only(device, args.stride)
    for role in args.roles:
        names = list(args.variants or DEFAULT_VARIANTS[role])
        names = [n for n in names if n != "logits_only" or role in TEACHER_ROLES]
        if args.compile and "compile" not in names:
            names.append("compile")
        variants, warmup = {}, {}
        for name in names:
            run, batch = build_variant(name, role, device, args.threads, args.stride)
            start = time.perf_counter()
            run()  # warm-up (compiles the compiled variant)
            warmup[name] = time.perf_counter() - start
            variants[name] = run
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.repeats):
            for name, run in variants.items():
                per_step = common.timed(lambda: [run() for _ in range(args.steps)], device) / args.steps
                times[name].append(batch / per_step)
        load_end = common.loadavg()
        rows = {n: {**common.stats(v), "first_step_s": warmup[n]} for n, v in times.items()}
        result["roles"][role] = {"batch": batch, "images_per_s": rows, "loadavg_end": load_end}
        print(f"\n{role} (batch {batch}), images/s min / median over {args.repeats} x {args.steps} steps; "
              f"load at end {load_end}")
        base = rows["eager"]["median"]
        for n, r in rows.items():
            print(f"  {n:<14} {r['min']:7.2f} / {r['median']:7.2f}   x{r['median'] / base:4.2f} vs eager"
                  f"   first step {r['first_step_s']:.1f} s")
        if args.profile:
            result["roles"][role]["top_ops"] = profile_role(role, device, args.threads, args.top, args.stride)
    print(f"\nlogits-only fore pass: max |Δ logits| = {result['logits_only_max_abs_diff']:.2e}")
    common.dump(result, args.json)


if __name__ == "__main__":
    main()
