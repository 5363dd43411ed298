"""A deterministic, per-class validation split carved from TRAIN (the test split is never touched)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random

from kdcicam.data.base import DatasetIndex, Sample


def carve_validation(index: DatasetIndex, fraction: float, seed: int) -> DatasetIndex:
    """Move a per-class share of the train images into the val split.

    Per class: sort its train samples by image id, shuffle them with an RNG seeded from
    ``(seed, label)``, and hold out the first ``round_half_up(fraction * n)`` — at least 1 when
    ``fraction > 0`` and the class has >= 2 train images, and never all of them (a class keeps at
    least one train image). An index that already has a val split (wsolevaluation metadata) is
    returned unchanged.

    Args:
        index: The dataset; its ``test`` split is copied as is.
        fraction: Share of each class's train images held out, in ``[0, 1)``.
        seed: Split seed (independent of the run seed): same seed, same split.

    Returns:
        A new index whose ``train`` and ``val`` are disjoint and together equal the old ``train``
        (both in the old train order).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if index.val:
        return index
    by_class: dict[int, list[Sample]] = {}
    for sample in index.train:
        by_class.setdefault(sample.label, []).append(sample)
    held_out: set[str] = set()
    for label, samples in by_class.items():
        k = holdout_count(len(samples), fraction)
        ordered = sorted(samples, key=lambda s: s.image_id)
        _shuffle(ordered, random.Random(_class_seed(seed, label)))
        held_out.update(s.image_id for s in ordered[:k])
    return dataclasses.replace(
        index,
        train=tuple(s for s in index.train if s.image_id not in held_out),
        val=tuple(s for s in index.train if s.image_id in held_out),
    )


def holdout_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` train images go to val: ``round_half_up(fraction * n)``, clamped.

    >>> holdout_count(25, 0.1), holdout_count(3, 0.1), holdout_count(2, 0.9), holdout_count(1, 0.5)
    (3, 1, 1, 0)
    """
    if fraction <= 0.0 or n < 2:
        return 0
    return min(max(math.floor(fraction * n + 0.5), 1), n - 1)


def _class_seed(seed: int, label: int) -> int:
    """A 64-bit integer seed from ``(seed, label)`` (hash-based: stable across processes)."""
    digest = hashlib.sha256(f"kdcicam-val:{seed}:{label}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big")


def _shuffle(items: list, rng: random.Random) -> None:
    """In-place Fisher-Yates shuffle using only ``rng.random()``.

    ``random.shuffle``'s algorithm may change between Python versions; ``random()`` with an
    integer seed is guaranteed stable, so the split is too.
    """
    for i in range(len(items) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        items[i], items[j] = items[j], items[i]
