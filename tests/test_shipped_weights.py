"""Shipped weights (``model.weights = "shipped:NAME"``): loading, the sha256 check, identity, one-line errors."""

from __future__ import annotations

import io
import json

import pytest
import torch

from kdcicam.core.config import ModelConfig, RunConfig, with_overrides
from kdcicam.core.identity import config_hash, identity_dict
from kdcicam.core.errors import ConfigError, RunError
from kdcicam.model import shipped
from kdcicam.model.backbones import build_backbone
from kdcicam.model.factory import build_model
from kdcicam.model.weights import file_sha256

NAME = "vgg16_bn-w0.0625"


def model_cfg(**overrides) -> ModelConfig:
    return ModelConfig(**{"num_classes": 4, "width": 0.0625, "batch_norm": True, "output_stride": 4,
                          "nonlocal_blocks": 2, "weights": f"shipped:{NAME}", **overrides})


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A shipped-weights folder holding one backbone (random weights, fp16) and its sidecar."""
    backbone = build_backbone("vgg16", 0.0625, 8, 0, "paper", True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in backbone.state_dict().items()}
    torch.nn.init.constant_(backbone.features[0].weight, 0.25)
    state["features.0.weight"] = backbone.features[0].weight.detach().half()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / f"{NAME}.pt").write_bytes(buffer.getvalue())
    (tmp_path / f"{NAME}.json").write_text(json.dumps({"sha256": file_sha256(tmp_path / f"{NAME}.pt")}))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    return tmp_path


def test_shipped_weights_load_at_reduced_width(folder):
    model = build_model(model_cfg(), "reference", 32)
    assert torch.all(model.backbone.features[0].weight == 0.25)
    assert model.weights_record["sha256"] == file_sha256(folder / f"{NAME}.pt")
    assert model.weights_record["matched_keys"] > 0


def test_a_corrupt_file_is_a_one_line_error(folder):
    path = folder / f"{NAME}.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match="corrupt or replaced") as info:
        build_model(model_cfg(), "reference", 32)
    assert "\n" not in str(info.value)


def test_a_missing_file_names_the_shipped_ones(folder):
    with pytest.raises(RunError, match=f"no such shipped weights.*shipped: {NAME}"):
        build_model(model_cfg(weights="shipped:vgg16_bn-w9"), "reference", 32)


def test_a_pin_other_than_the_sidecar_is_refused(folder):
    with pytest.raises(RunError, match="pins other weights"):
        build_model(model_cfg(weights_sha256="0" * 64), "reference", 32)


def test_a_pin_checks_a_file_given_by_path(tmp_path):
    path = tmp_path / "vgg16.pth"
    path.write_bytes(b"not the pinned file")
    with pytest.raises(RunError, match="corrupt or replaced"):
        build_model(model_cfg(weights=str(path), width=1.0, weights_sha256="0" * 64), "reference", 32)


def test_other_widths_do_not_fit(folder):
    with pytest.raises(RunError, match="mis-shaped"):
        build_model(model_cfg(width=0.125), "reference", 32)


def test_sha_enters_identity_only_when_set():
    base = RunConfig()
    assert "weights_sha256" not in identity_dict(base)["model"]
    pinned = with_overrides(base, {"model.weights": "shipped:x", "model.weights_sha256": "a" * 64})
    other = with_overrides(base, {"model.weights": "shipped:x", "model.weights_sha256": "b" * 64})
    assert identity_dict(pinned)["model"]["weights_sha256"] == "a" * 64
    assert config_hash(pinned) != config_hash(other)


def test_config_accepts_shipped_weights_at_reduced_width_only():
    cfg = with_overrides(RunConfig(), {"model.width": 0.125, "model.weights": "shipped:x"})
    assert cfg.validate() is cfg
    with pytest.raises(ConfigError, match="need width 1.0"):
        with_overrides(RunConfig(), {"model.width": 0.125, "model.weights": "/some/vgg16.pth"}).validate()
    with pytest.raises(ConfigError, match="model.weights_sha256"):
        with_overrides(RunConfig(), {"model.weights_sha256": "xyz"}).validate()


def test_the_shipped_backbone_loads_into_the_reduced_network():
    names = shipped.shipped_names()
    assert "vgg16_bn-w0.125" in names
    cfg = ModelConfig(num_classes=10, width=0.125, batch_norm=True, output_stride=8, nonlocal_blocks=4,
                      weights="shipped:vgg16_bn-w0.125")
    model = build_model(cfg, "reference", 96)
    sidecar = shipped.read_sidecar("vgg16_bn-w0.125")
    assert model.weights_record["sha256"] == sidecar["sha256"]
    assert model.weights_record["matched_keys"] == len(torch.load(
        shipped.SHIPPED_DIR / "vgg16_bn-w0.125.pt", weights_only=True))


def test_resolution_pins_shipped_weights_so_new_weights_are_a_new_run(folder):
    cfg = model_cfg()
    pinned = shipped.pin_shipped_weights(cfg)
    assert pinned.weights_sha256 == file_sha256(folder / f"{NAME}.pt")
    assert shipped.pin_shipped_weights(pinned) == pinned
    assert shipped.pin_shipped_weights(model_cfg(weights=None)).weights_sha256 is None
    run = with_overrides(RunConfig(), {"model.weights": cfg.weights})
    first = config_hash(with_overrides(run, {"model.weights_sha256": pinned.weights_sha256}))
    (folder / f"{NAME}.json").write_text(json.dumps({"sha256": "f" * 64}))  # the weights were regenerated
    again = shipped.pin_shipped_weights(cfg)
    assert config_hash(with_overrides(run, {"model.weights_sha256": again.weights_sha256})) != first


@pytest.mark.parametrize("name, backbone, stride, batch_norm", [
    ("vgg16_bn-w0.125", "vgg16", 4, True), ("inceptionv3-w0.125", "inceptionv3", 16, False)])
def test_the_repository_weights_match_their_sidecars_and_load(name, backbone, stride, batch_norm):
    """The files in kdcicam/weights/ (not a stand-in folder): the sidecar's sha256 is the file's, and every
    tensor loads into the reduced network of the profiles' width."""
    sidecar = json.loads((shipped.SHIPPED_DIR / f"{name}.json").read_text())
    assert sidecar["sha256"] == file_sha256(shipped.SHIPPED_DIR / f"{name}.pt")
    assert sidecar["recipe"]["backbone"] == backbone and sidecar["recipe"]["output_stride"] in (8, 16)
    cfg = ModelConfig(backbone=backbone, num_classes=10, width=0.125, batch_norm=batch_norm, output_stride=stride,
                      nonlocal_blocks=2, weights=f"shipped:{name}")
    model = build_model(cfg, "reference", 96 if backbone == "vgg16" else 160)
    assert model.weights_record["sha256"] == sidecar["sha256"]
    assert model.weights_record["matched_keys"] == len(torch.load(shipped.SHIPPED_DIR / f"{name}.pt",
                                                                  weights_only=True))
