"""Checkpoints: atomic, checksummed, and recoverable from a crash at any instant of a write."""

from __future__ import annotations

import json
import os

import pytest
import torch

from kdcicam.core.errors import RunError
from kdcicam.training import checkpoint as ckpt
from kdcicam.training.checkpoint import (
    MANIFEST,
    load_checkpoint,
    load_resume_state,
    remove_stale_temps,
    rotate_last,
    save_checkpoint,
)


def _state(tag: int) -> dict:
    return {"model": {"w": torch.full((3,), float(tag))}, "epoch": tag,
            "best": {"top1_loc": {"epoch": tag, "value": 0.5}}}


def _commit(folder, state) -> None:
    """What the trainer does at every epoch end."""
    rotate_last(folder)
    save_checkpoint(state, folder, "last.pt")


def test_round_trip_is_weights_only_and_listed_in_the_manifest(tmp_path):
    digest = save_checkpoint(_state(3), tmp_path, "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded["model"]["w"], torch.tensor([3.0, 3.0, 3.0])) and loaded["epoch"] == 3
    assert json.loads((tmp_path / MANIFEST).read_text()) == {"last.pt": [digest]}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rotation_keeps_the_previous_state_as_prev(tmp_path):
    _commit(tmp_path, _state(1))
    _commit(tmp_path, _state(2))
    assert load_checkpoint(tmp_path / "prev.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert sorted(json.loads((tmp_path / MANIFEST).read_text())) == ["last.pt", "prev.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty"])
def test_a_damaged_last_is_reported_and_prev_is_used(tmp_path, damage):
    _commit(tmp_path, _state(1))
    _commit(tmp_path, _state(2))
    last = tmp_path / "last.pt"
    data = last.read_bytes()
    if damage == "truncate":
        last.write_bytes(data[: len(data) // 2])  # a torn copy
    elif damage == "flip_byte":
        i = len(data) // 2
        last.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])  # bit rot: zip may not notice
    else:
        last.write_bytes(b"")
    state, warnings = load_resume_state(tmp_path)
    assert state is not None and state["epoch"] == 1
    assert len(warnings) == 1 and "last.pt: checksum mismatch" in warnings[0] and "falling back" in warnings[0]


def test_nothing_intact_means_no_resume_with_one_warning_per_file(tmp_path):
    _commit(tmp_path, _state(1))
    _commit(tmp_path, _state(2))
    for name in ("last.pt", "prev.pt"):
        (tmp_path / name).write_bytes(b"garbage")
    state, warnings = load_resume_state(tmp_path)
    assert state is None and len(warnings) == 2


def test_an_empty_folder_has_nothing_to_resume(tmp_path):
    assert load_resume_state(tmp_path) == (None, [])


class _Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception`` handlers)."""


def _crashing_replace(real, crash_at: int):
    """An ``os.replace`` that crashes (before renaming) on its call number ``crash_at`` (0-based)."""
    calls = []

    def replace(a, b):
        if len(calls) == crash_at:
            raise _Crash
        calls.append(b)
        return real(a, b)

    return replace


def _count_replaces(monkeypatch, folder, state) -> int:
    calls = []
    real = os.replace
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (calls.append(b), real(a, b))[1])
    _commit(folder, state)
    monkeypatch.setattr(ckpt.os, "replace", real)
    return len(calls)


def test_a_crash_at_any_rename_of_a_commit_leaves_the_old_or_the_new_state(tmp_path, monkeypatch):
    # One commit renames 6 files: rotate = manifest (both digests), last.pt -> prev.pt, manifest;
    # save = manifest (both digests), the new last.pt, manifest. A crash before any of them must
    # leave a folder that resumes, with no warning, at epoch 2 (old) or 3 (new). A one-step manifest
    # update (digest written after the data) fails this at the crash before the last rename.
    _count_replaces(monkeypatch, tmp_path / "probe", _state(0))  # nothing to rotate yet
    n = _count_replaces(monkeypatch, tmp_path / "probe", _state(1))
    assert n >= 2  # at least prev.pt and last.pt
    real = os.replace
    for crash_at in range(n + 1):
        folder = tmp_path / f"crash{crash_at}"
        _commit(folder, _state(1))
        _commit(folder, _state(2))
        monkeypatch.setattr(ckpt.os, "replace", _crashing_replace(real, crash_at))
        with pytest.raises(_Crash) if crash_at < n else _nothing():
            _commit(folder, _state(3))
        monkeypatch.setattr(ckpt.os, "replace", real)
        state, warnings = load_resume_state(folder)
        assert warnings == [], f"crash before rename {crash_at}: {warnings}"
        assert state is not None and state["epoch"] in (2, 3), f"crash before rename {crash_at}"
        if crash_at == n:
            assert state["epoch"] == 3
        # and the next commit after the crash works as usual
        _commit(folder, _state(4))
        assert load_resume_state(folder)[0]["epoch"] == 4 and load_resume_state(folder)[1] == []


def test_a_crash_while_overwriting_a_file_in_place_leaves_the_old_or_the_new_one(tmp_path, monkeypatch):
    # best_<criterion>.pt is overwritten in place: the manifest must accept the old bytes until the
    # new ones are renamed in, and the new ones from then on (3 renames: manifest, file, manifest).
    real = os.replace
    for crash_at in range(4):
        folder = tmp_path / f"crash{crash_at}"
        save_checkpoint(_state(1), folder, "best_top1_loc.pt")
        monkeypatch.setattr(ckpt.os, "replace", _crashing_replace(real, crash_at))
        with pytest.raises(_Crash) if crash_at < 3 else _nothing():
            save_checkpoint(_state(2), folder, "best_top1_loc.pt")
        monkeypatch.setattr(ckpt.os, "replace", real)
        assert load_checkpoint(folder / "best_top1_loc.pt")["epoch"] == (1 if crash_at < 2 else 2), crash_at


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    save_checkpoint(_state(1), tmp_path, "last.pt")
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".checksums.json.x.tmp").write_bytes(b"{")
    assert remove_stale_temps(tmp_path) == [".checksums.json.x.tmp", ".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "last.pt"]


def test_a_manifest_of_plain_digests_still_verifies(tmp_path):
    digest = save_checkpoint(_state(1), tmp_path, "last.pt")
    (tmp_path / MANIFEST).write_text(json.dumps({"last.pt": digest}))  # the first format: one string
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    (tmp_path / MANIFEST).write_text(json.dumps({"last.pt": "0" * 64}))
    with pytest.raises(RunError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "last.pt")


def test_an_unlisted_file_is_loaded_unverified_and_listed_when_rotated(tmp_path):
    torch.save(_state(5), tmp_path / "last.pt")  # e.g. copied in by hand, no manifest
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5
    _commit(tmp_path, _state(6))
    assert load_checkpoint(tmp_path / "prev.pt")["epoch"] == 5
    assert sorted(json.loads((tmp_path / MANIFEST).read_text())) == ["last.pt", "prev.pt"]


class _NotAllowed:
    pass


def test_a_checkpoint_that_is_not_plain_data_is_refused(tmp_path):
    torch.save({"model": {}, "thing": _NotAllowed()}, tmp_path / "last.pt")
    with pytest.raises(RunError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "last.pt")


def test_a_missing_checkpoint_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "best_top1_loc.pt")
