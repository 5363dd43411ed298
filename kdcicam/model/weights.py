"""Load torchvision's ImageNet weights into a CICAM backbone, from a local file only (never downloads).

Our backbones keep torchvision's module names (the non-local blocks live in ``backbone.nonlocal_blocks``
and shift no index), so torchvision's key ``K`` maps to our ``backbone.K``. The check is strict: every
backbone tensor of ours that has a torchvision counterpart (all but the non-local blocks) must be in the
file with the same shape, else :class:`RunError`. ``num_batches_tracked`` counters are optional (the
InceptionV3 file predates them). The file's other keys (VGG ``classifier.*``; Inception ``AuxLogits``,
``Mixed_7*``, ``fc``) are ignored and listed in the returned record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcicam.core.errors import ConfigError, RunError
from kdcicam.model.backbones import CHECKPOINT_FILES

_OPTIONAL_SUFFIX = "num_batches_tracked"
_NOT_FROM_TORCHVISION = "nonlocal_blocks."


def hub_checkpoint_path(backbone: str) -> Path:
    """Where torch.hub caches torchvision's ImageNet file for ``backbone`` (``<hub dir>/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_FILES[backbone]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, map_location="cpu", weights_only=True)``, checked to be a str -> Tensor mapping.

    Raises:
        RunError: the file cannot be unpickled safely (weights_only refuses it), is corrupt, or is not a
            state dict (e.g. a bare tensor, a list, a dict of non-tensors).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals are UnpicklingError; corrupt zips RuntimeError, EOFError...
        first_line = (str(exc).strip().splitlines() or [""])[0][:160]
        raise RunError(f"{path}: not a loadable weights file ({type(exc).__name__}: {first_line})") from None
    if not isinstance(obj, Mapping):
        raise RunError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise RunError(f"{path}: not a state dict (entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor)")
    return dict(obj)


def match_backbone_keys(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor], source: str,
                        backbone: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Pick torchvision's tensors for our backbone state dict, strictly.

    Args:
        ours: our backbone's state dict (keys without the ``backbone.`` prefix).
        theirs: torchvision's state dict.
        source: the file name, for messages.
        backbone: "vgg16" or "inceptionv3", for messages.

    Returns:
        matched: our key -> their tensor, for every backbone key with a torchvision counterpart.
        ignored: their keys we do not use, sorted.

    Raises:
        RunError: a required key is missing or has another shape; names the first one and the count.
    """
    required = [k for k in ours if not k.startswith(_NOT_FROM_TORCHVISION)]
    matched: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key in required:
        tensor = theirs.get(key)
        if tensor is None:
            if not key.endswith(_OPTIONAL_SUFFIX):
                problems.append(f"{key!r} is missing")
        elif tuple(tensor.shape) != tuple(ours[key].shape):
            problems.append(f"{key!r} has shape {tuple(tensor.shape)}, ours {tuple(ours[key].shape)}")
        else:
            matched[key] = tensor
    if problems:
        raise RunError(
            f"{source}: {len(problems)} of {len(required)} {backbone} backbone tensors missing or mis-shaped, "
            f"first: {problems[0]} (expected torchvision's {CHECKPOINT_FILES[backbone]})"
        )
    ignored = sorted(k for k in theirs if k not in matched)
    return matched, ignored


def load_pretrained(model: nn.Module, path: str | Path | None = None, expected_sha256: str | None = None,
                    any_width: bool = False) -> dict[str, Any]:
    """Copy torchvision-format weights (ImageNet's, or shipped ones) into ``model.backbone``.

    Args:
        model: a CICAM whose ``backbone`` has ``name`` ("vgg16" | "inceptionv3") and ``width`` attributes.
        path: the checkpoint file; None looks for torchvision's file name in the torch hub cache
            (``torch.hub.get_dir()/checkpoints/``). Nothing is ever downloaded.
        expected_sha256: when given, the file's sha256 must equal it (else RunError: corrupt or replaced).
        any_width: accept a reduced-width backbone (shipped weights are pretrained at the profiles' width);
            the tensors' shapes are still checked.

    Returns:
        Record ``{"pretrained": True, "backbone", "path", "sha256", "matched_keys", "ignored_keys",
        "ignored_modules"}`` (counts, and the top-level module names of the ignored keys).

    Raises:
        ConfigError: the backbone's width is not 1.0 (ImageNet shapes exist only for the paper's network).
        RunError: no file, an unreadable / unsafe / non-state-dict file, or missing / mis-shaped keys.
    """
    backbone = model.backbone
    name = str(backbone.name)
    if backbone.width != 1.0 and not any_width:
        raise ConfigError(f"model.width = {backbone.width}: ImageNet weights need width 1.0 "
                          "(set model.weights to none for a reduced-width network)")
    if path is None:
        file = hub_checkpoint_path(name)
        if not file.is_file():
            raise RunError(f"no {name} ImageNet weights at {file}: put torchvision's {CHECKPOINT_FILES[name]} "
                           "there or give model.weights a file path (nothing is downloaded)")
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise RunError(f"model.weights = {str(path)!r}: no such file")
    sha256 = file_sha256(file)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise RunError(f"{file}: sha256 {sha256[:16]}... is not the expected {expected_sha256[:16]}... "
                       "(a corrupt or replaced weights file)")
    theirs = read_state_dict(file)
    matched, ignored = match_backbone_keys(backbone.state_dict(), theirs, str(file), name)
    missing, unexpected = backbone.load_state_dict(matched, strict=False)
    if unexpected or any(not (k.startswith(_NOT_FROM_TORCHVISION) or k.endswith(_OPTIONAL_SUFFIX))
                         for k in missing):
        raise ValueError(f"internal: weight mapping left {missing[:3]} / {unexpected[:3]}")
    return {
        "pretrained": True,
        "backbone": name,
        "path": str(file.resolve()),
        "sha256": sha256,
        "matched_keys": len(matched),
        "ignored_keys": len(ignored),
        "ignored_modules": sorted({k.split(".")[0] for k in ignored}),
    }
