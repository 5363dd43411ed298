"""The paper's settings per dataset and backbone (``paper-hyperparameters.csv``) as config overrides, and which
dataset's settings each dataset borrows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from kdcicam.core.errors import ConfigError

# Which of the paper's dataset settings a dataset borrows (the synthetic benchmark stands in for CUB).
SETTINGS_FROM = {"synthetic": "cub", "cub": "cub", "wsol": "cub", "ilsvrc": "ilsvrc"}

# paper-hyperparameters.csv column -> config key
_HP_COLUMNS = {
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "update_rate_lambda": "model.update_rate",
    "epochs": "train.epochs",
    "T_cls": "loss.T_cls",
    "T_loc": "loss.T_loc",
    "alpha": "loss.alpha",
    "cls_teacher_mu": "loss.mu",
    "cls_teacher_eta": "loss.eta",
    "loc_teacher_beta": "loss.beta",
    "loc_teacher_delta": "loss.delta",
    "test_resize": "eval.test_resize",
    "test_crop": "eval.test_crop",
    "box_threshold_theta": "eval.theta",
    "nonlocal_blocks": "model.nonlocal_blocks",
}
_INT_KEYS = {"train.batch_size", "train.epochs", "eval.test_resize", "eval.test_crop", "model.nonlocal_blocks"}


def read_paper_settings(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read ({exc})") from None
    for i, row in enumerate(rows, start=2):
        settings: dict[str, Any] = {}
        for col, key in _HP_COLUMNS.items():
            try:
                value = float(row[col])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{path.name}:{i}: column {col!r} missing or not a number") from None
            settings[key] = int(value) if key in _INT_KEYS else value
        opt = row.get("optimizer", "")
        if opt.startswith("adam("):
            b1, b2 = opt[5:-1].split(";")
            settings["train.betas"] = [float(b1), float(b2)]
        settings["data.crop"] = settings["eval.test_crop"]
        settings["data.train_resize"] = round(settings["eval.test_crop"] * 256 / 224)
        out[(row["dataset"], row["backbone"])] = settings
    return out
