"""Several processes (threads here: flock conflicts between open file descriptions alike) asking for one
synthetic dataset at once: one generates it, the others wait and use it; a finished dataset is never removed
under a reader."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

from kdcicam.core.config import SynthConfig
from kdcicam.core.errors import KdcicamError
from kdcicam.data import source
from kdcicam.data.synthetic import generate

TINY = SynthConfig(classes=2, per_class=4, size=32)


def test_concurrent_callers_generate_once_and_all_get_the_finished_dataset(tmp_path, monkeypatch):
    calls = []

    def slow_generate(root: Path, synth, overwrite: bool = False):
        calls.append(root)
        time.sleep(0.3)  # long enough for every other caller to arrive while this one writes
        return generate(root, synth, overwrite=overwrite)

    monkeypatch.setattr("kdcicam.data.synthetic.generate", slow_generate)
    roots, errors = [], []

    def ask():
        try:
            root = source.ensure_synthetic(tmp_path, TINY)
            roots.append((root, json.loads((root / "generator.json").read_text())["config"]["seed"]))
        except (KdcicamError, OSError) as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(calls) == 1 and len({root for root, _ in roots}) == 1 and len(roots) == 4


def test_regenerating_moves_the_old_folder_aside_whole(tmp_path):
    out = tmp_path / "ds"
    generate(out, TINY)
    generate(out, TINY, overwrite=True)
    assert (out / "generator.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def _ensure(cache: str, results) -> None:
    root = source.ensure_synthetic(Path(cache), TINY)
    names = (root / "images.txt").read_text().split()[1::2]
    results.put(bool(names) and all((root / "images" / name).is_file() for name in names))


def test_four_processes_share_one_cache(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(str(tmp_path), results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [results.get(timeout=5) for _ in procs] == [True] * 4
