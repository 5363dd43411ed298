"""Runs written straight into a store (no training): for ledger, comparison and report tests."""

from __future__ import annotations


def add_finished_run(store, run_id: str, table: str, cell: str, seed: int, metrics: dict, correct=None, *,
                     fingerprint: str = "fp", variant: str = "reference", train: dict | None = None,
                     config: dict | None = None) -> None:
    """A finished quick-profile student labelled ``{table: [cell]}`` with paper-protocol test metrics.

    ``train``: the config's ``train`` section (a gridded cell's training setting, e.g. ``{"lr": 0.001}``).
    ``config``: more config sections (``{"data": {"synth": {...}}}``), merged section by section.

    ``correct``: per-image 0/1 outcomes stored as the run's per-image records: one list for every
    flag, or ``{flag: list}`` (flags left out are 0).
    """
    cfg = {"model": {"backbone": "vgg16"}, "variant": variant, "train": train or {}}
    for section, values in (config or {}).items():
        cfg[section] = {**cfg.get(section, {}), **values}
    store.get_or_create_run(run_id, config_hash=run_id, role="student", profile="quick", variant=variant,
                            dataset="synthetic", seed=seed, config=cfg, dataset_fingerprint=fingerprint)
    store.add_labels(run_id, table, cell)
    store.claim_run(run_id, pid=1, host="h")
    store.set_final_metrics(run_id, "paper", "last", "fixed", "test", metrics)
    if correct is not None:
        flags = ("correct_top1_cls", "correct_top5_cls", "correct_top1_loc", "correct_top5_loc", "correct_gt_known")
        by_flag = correct if isinstance(correct, dict) else dict.fromkeys(flags, correct)
        n = len(next(iter(by_flag.values())))
        store.add_image_records(run_id, "paper", "last", "test", [
            {"image_id": f"im{i}", "label": 0, "top5": [0], "top5_scores": [1.0], "box": [0, 0, 1, 1], "iou": 0.0,
             **{flag: bool(by_flag[flag][i]) if flag in by_flag else False for flag in flags}} for i in range(n)])
    store.finish_run(run_id, train_seconds=1.0, eval_seconds=1.0)
