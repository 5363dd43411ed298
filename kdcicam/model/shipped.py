"""Weights that ship with the project (``kdcicam/weights/NAME.pt`` + ``NAME.json``), named ``shipped:NAME``.

They are backbones pretrained by ``kdcicam pretrain`` on the pretraining set (a stand-in for ImageNet at
the reduced profiles' width; docs/synthetic.md), stored as torchvision-format state dicts, so they load
through :func:`kdcicam.model.weights.load_pretrained` like torchvision's own files. The sidecar JSON holds
the recipe, the sha256 of the ``.pt`` file and the command that regenerates it; the file is checked
against that sha256 (and against ``model.weights_sha256`` when a config pins it) before it is read.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdcicam.core.config import ModelConfig
from kdcicam.core.errors import RunError

SHIPPED_PREFIX = "shipped:"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"


def is_shipped(spec: str | None) -> bool:
    """Whether a ``model.weights`` value names shipped weights (``shipped:NAME``)."""
    return spec is not None and spec.startswith(SHIPPED_PREFIX)


def shipped_names(folder: Path | None = None) -> list[str]:
    """Names of the shipped weights (every ``NAME.pt`` with a ``NAME.json`` beside it), sorted."""
    folder = folder or SHIPPED_DIR
    return sorted(p.stem for p in folder.glob("*.pt") if p.with_suffix(".json").is_file())


def read_sidecar(name: str, folder: Path | None = None) -> dict[str, Any]:
    """The sidecar record of shipped weights ``name``.

    Raises:
        RunError: no such weights, or an unreadable sidecar (one line naming the file).
    """
    folder = folder or SHIPPED_DIR
    pt, sidecar = folder / f"{name}.pt", folder / f"{name}.json"
    if not pt.is_file() or not sidecar.is_file():
        known = ", ".join(shipped_names(folder)) or "none"
        raise RunError(f"model.weights = '{SHIPPED_PREFIX}{name}': no such shipped weights in {folder} "
                       f"(shipped: {known})")
    try:
        record = json.loads(sidecar.read_text())
        str(record["sha256"])
    except (ValueError, KeyError, TypeError):
        raise RunError(f"{sidecar}: not a weights sidecar (JSON with a sha256)") from None
    return record


def shipped_file(spec: str, folder: Path | None = None) -> tuple[Path, str]:
    """The file of ``shipped:NAME`` and the sha256 its sidecar records.

    Raises:
        RunError: unknown name or unreadable sidecar.
    """
    name = spec[len(SHIPPED_PREFIX):]
    return (folder or SHIPPED_DIR) / f"{name}.pt", str(read_sidecar(name, folder)["sha256"])


def shipped_sha256(spec: str, folder: Path | None = None) -> str:
    """The sha256 recorded for ``shipped:NAME`` (what a profile pins as ``model.weights_sha256``)."""
    return shipped_file(spec, folder)[1]


def pin_shipped_weights(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``weights_sha256`` set from the sidecar when it names shipped weights and pins none.

    A run's identity holds ``model.weights_sha256`` when set, so pinning at config resolution makes
    regenerated shipped weights a different run instead of a silent reuse of runs trained from the
    old file.

    Raises:
        RunError: unknown shipped weights or an unreadable sidecar.
    """
    if not is_shipped(cfg.weights) or cfg.weights_sha256 is not None:
        return cfg
    return replace(cfg, weights_sha256=shipped_sha256(str(cfg.weights)))
