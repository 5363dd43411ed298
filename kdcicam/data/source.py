"""Where a run's data comes from: the synthetic benchmark (generated on first use into a cache
folder keyed by its parameters) or a real dataset folder given by path."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kdcicam.core.config import DataConfig, SynthConfig
from kdcicam.core.errors import ConfigError
from kdcicam.core.filelock import exclusive_lock
from kdcicam.core.identity import config_hash
from kdcicam.data.base import DatasetIndex
from kdcicam.data.loader import load_dataset


def synthetic_root(cache_dir: Path, synth: SynthConfig) -> Path:
    """The cache folder of one synthetic configuration (same parameters, same folder)."""
    return Path(cache_dir) / "synthetic" / config_hash(synth)


def ensure_synthetic(cache_dir: Path, synth: SynthConfig) -> Path:
    """Generate the synthetic benchmark into the cache unless an identical copy is already there.

    Any number of processes may call this at once: one generates (into a temporary folder renamed into
    place), under a lock file beside the folder; the others wait for it and then use its dataset.
    """
    from kdcicam.data.synthetic import generate

    root = synthetic_root(cache_dir, synth)
    if _is_complete(root, synth):
        return root
    with exclusive_lock(root.with_name(f".{root.name}.lock")):
        if not _is_complete(root, synth):  # another process may have generated it while we waited
            generate(root, synth, overwrite=True)
    return root


def _is_complete(root: Path, synth: SynthConfig) -> bool:
    """Whether ``root`` holds a finished dataset of these parameters written by this generator version
    (generator.json is written last; a folder of an older version is generated again in place)."""
    from kdcicam.data.synthetic import GENERATOR_VERSION

    meta = root / "generator.json"
    if not meta.is_file():
        return False
    try:
        recorded = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (isinstance(recorded, dict) and recorded.get("version") == GENERATOR_VERSION
            and _same_params(recorded, synth))


def _same_params(recorded: dict, synth: SynthConfig) -> bool:
    params = recorded.get("config", recorded.get("params", recorded))
    if not isinstance(params, dict):
        return False
    want = json.loads(json.dumps(asdict(synth)))
    return all(params.get(k) == v for k, v in want.items())


def open_dataset(data: DataConfig, cache_dir: Path, read_headers: bool = True) -> DatasetIndex:
    """Load (generating the synthetic benchmark if needed) and split the dataset a config names.

    ``read_headers``: read every image header first, so that a damaged image (one cut short included)
    is refused here rather than while training; ``False`` only checks that each image file exists.
    """
    if data.dataset == "synthetic":
        root = Path(data.root) if data.root else ensure_synthetic(cache_dir, data.synth)
        fmt = "cub"
    else:
        if not data.root:
            raise ConfigError(f"--data PATH is required for dataset {data.dataset!r} (only the synthetic "
                              f"benchmark is generated here; real data is never downloaded)")
        root, fmt = Path(data.root), data.dataset
    return load_dataset(root, format=fmt, val_fraction=data.val_fraction, split_seed=data.split_seed,
                        read_headers=read_headers)
