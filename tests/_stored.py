"""Runs written straight into a store (no training): for ledger, comparison and report tests."""

from __future__ import annotations


def add_finished_run(store, run_id: str, table: str, cell: str, seed: int, metrics: dict, correct=None, *,
                     fingerprint: str = "fp", variant: str = "reference", train: dict | None = None) -> None:
    """A finished quick-profile student labelled ``{table: [cell]}`` with paper-protocol test metrics.

    ``train``: the config's ``train`` section (a gridded cell's training setting, e.g. ``{"lr": 0.001}``).

    ``correct``: per-image 0/1 outcomes (every flag the same) stored as the run's per-image records.
    """
    store.get_or_create_run(run_id, config_hash=run_id, role="student", profile="quick", variant=variant,
                            dataset="synthetic", seed=seed,
                            config={"model": {"backbone": "vgg16"}, "variant": variant, "train": train or {}},
                            dataset_fingerprint=fingerprint)
    store.add_labels(run_id, table, cell)
    store.claim_run(run_id, pid=1, host="h")
    store.set_final_metrics(run_id, "paper", "last", "fixed", "test", metrics)
    if correct is not None:
        store.add_image_records(run_id, "paper", "last", "test", [
            {"image_id": f"im{i}", "label": 0, "top5": [0], "top5_scores": [1.0], "box": [0, 0, 1, 1], "iou": 0.0,
             "correct_top1_cls": c, "correct_top5_cls": c, "correct_top1_loc": c, "correct_top5_loc": c,
             "correct_gt_known": c} for i, c in enumerate(correct)])
    store.finish_run(run_id, train_seconds=1.0, eval_seconds=1.0)
