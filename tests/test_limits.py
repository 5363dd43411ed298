"""Resource limits (core/limits.py) and the inputs they guard: overridable, one-line errors, no overflow."""

from __future__ import annotations

import numpy as np
import pytest

from kdcicam.core.config import RunConfig, with_overrides
from kdcicam.core.errors import ConfigError
from kdcicam.core.limits import LIMITS, check_limit, limit
from kdcicam.data.image_files import pixels_problem
from kdcicam.evaluation.cam_files import load_cam, normalize_cam


def test_defaults_and_environment_overrides(monkeypatch):
    monkeypatch.delenv("KDCICAM_MAX_EPOCHS", raising=False)
    assert limit("epochs") == LIMITS["epochs"].default
    monkeypatch.setenv("KDCICAM_MAX_EPOCHS", "50_000")
    assert limit("epochs") == 50_000
    check_limit("epochs", 50_000, "train.epochs")
    with pytest.raises(ConfigError, match=r"train.epochs = 50001: above the limit of 50000 training epochs "
                                          r"\(set KDCICAM_MAX_EPOCHS to raise it\)"):
        check_limit("epochs", 50_001, "train.epochs")
    for bad in ("0", "-3", "many", "1.5"):
        monkeypatch.setenv("KDCICAM_MAX_EPOCHS", bad)
        with pytest.raises(ConfigError, match="KDCICAM_MAX_EPOCHS"):
            limit("epochs")


def test_the_pixel_limit_is_below_pils_own_warning():
    from PIL import Image

    assert LIMITS["image_pixels"].default < Image.MAX_IMAGE_PIXELS
    assert pixels_problem(200, 100, bound=20_000) is None
    assert "200x101 = 20200 pixels, above the limit of 20000" in pixels_problem(200, 101, bound=20_000)


def test_config_validation_bounds_epochs_and_sizes(monkeypatch):
    monkeypatch.delenv("KDCICAM_MAX_EPOCHS", raising=False)
    monkeypatch.delenv("KDCICAM_MAX_IMAGE_SIDE", raising=False)
    with pytest.raises(ConfigError, match="train.epochs = 10001: above the limit"):
        with_overrides(RunConfig(), {"train.epochs": 10_001}).validate()
    with pytest.raises(ConfigError, match="data.synth.size = 5000: above the limit"):
        with_overrides(RunConfig(), {"data.synth.size": 5000}).validate()
    monkeypatch.setenv("KDCICAM_MAX_EPOCHS", "20000")
    with_overrides(RunConfig(), {"train.epochs": 10_001}).validate()


def test_cams_of_extreme_values_normalise_without_overflow(tmp_path):
    cam = np.zeros((4, 4))
    cam[0, 0], cam[3, 3] = -1e308, 1e308  # max - min overflows to inf
    np.save(tmp_path / "c.npy", cam)
    out = normalize_cam(load_cam(tmp_path / "c.npy"), 4)
    assert np.isfinite(out).all() and out.min() == 0.0 and out.max() == 1.0


def test_a_fifo_is_refused_before_any_reader_opens_it(tmp_path):
    import os

    from kdcicam.core.errors import DataError
    from kdcicam.data.base import Sample
    from kdcicam.data.dataset import load_rgb
    from kdcicam.evaluation.baselines import _size

    fifo = tmp_path / "im.jpg"
    os.mkfifo(fifo)  # opening it for reading would block for ever
    with pytest.raises(DataError, match="not a regular file"):
        load_rgb(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        _size(Sample(image_id="im", path=fifo, label=0, boxes=()))
