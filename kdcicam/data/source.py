"""Where a run's data comes from: the synthetic benchmark (generated on first use into a cache
folder keyed by its parameters) or a real dataset folder given by path."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kdcicam.core.config import DataConfig, SynthConfig
from kdcicam.core.errors import ConfigError
from kdcicam.core.identity import config_hash
from kdcicam.data.base import DatasetIndex
from kdcicam.data.loader import load_dataset


def synthetic_root(cache_dir: Path, synth: SynthConfig) -> Path:
    """The cache folder of one synthetic configuration (same parameters, same folder)."""
    return Path(cache_dir) / "synthetic" / config_hash(synth)


def ensure_synthetic(cache_dir: Path, synth: SynthConfig) -> Path:
    """Generate the synthetic benchmark into the cache unless an identical copy is already there."""
    from kdcicam.data.synthetic import generate

    root = synthetic_root(cache_dir, synth)
    meta = root / "generator.json"
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text())
        except json.JSONDecodeError:
            recorded = {}
        if _same_params(recorded, synth):
            return root
    generate(root, synth, overwrite=True)
    return root


def _same_params(recorded: dict, synth: SynthConfig) -> bool:
    params = recorded.get("config", recorded.get("params", recorded))
    want = json.loads(json.dumps(asdict(synth)))
    return all(params.get(k) == v for k, v in want.items())


def open_dataset(data: DataConfig, cache_dir: Path) -> DatasetIndex:
    """Load (generating the synthetic benchmark if needed) and split the dataset a config names."""
    if data.dataset == "synthetic":
        root = Path(data.root) if data.root else ensure_synthetic(cache_dir, data.synth)
        fmt = "cub"
    else:
        if not data.root:
            raise ConfigError(f"--data PATH is required for dataset {data.dataset!r} (only the synthetic "
                              f"benchmark is generated here; real data is never downloaded)")
        root, fmt = Path(data.root), data.dataset
    return load_dataset(root, format=fmt, val_fraction=data.val_fraction, split_seed=data.split_seed)
