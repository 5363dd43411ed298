"""Loading torchvision ImageNet checkpoints into the backbones (from fabricated files; nothing is downloaded)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from kdcicam.core.config import ModelConfig
from kdcicam.core.errors import ConfigError, RunError
from kdcicam.model.factory import build_model
from kdcicam.model.weights import load_pretrained


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    """torchvision's VGG16 state dict (random init), minus the two big FC layers to keep the file small.

    The file keeps ``classifier.6.*`` so the "ignored keys" path is exercised; the dropped ``classifier.0/3``
    would be ignored the same way.
    """
    state = torchvision.models.vgg16(weights=None).state_dict()
    return {k: v for k, v in state.items() if not k.startswith(("classifier.0.", "classifier.3."))}


@pytest.fixture(scope="module")
def vgg_file(vgg_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hub") / "vgg16-397923af.pth"
    torch.save(vgg_state, path)
    return path


@pytest.fixture(scope="module")
def inception_state() -> dict[str, torch.Tensor]:
    """torchvision's Inception3 state dict with random BN statistics (at init they would equal ours: 0 / 1)."""
    state = torchvision.models.Inception3(aux_logits=True, init_weights=False).state_dict()
    gen = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if key.endswith((".bn.weight", ".bn.running_var")):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith((".bn.bias", ".bn.running_mean")):
            state[key] = torch.randn(value.shape, generator=gen)
    return state


@pytest.fixture(scope="module")
def inception_file(inception_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inc") / "inception_v3_google-0cc3c7bd.pth"
    torch.save(inception_state, path)
    return path


def vgg_cfg(**overrides) -> ModelConfig:
    return ModelConfig(**{"backbone": "vgg16", "num_classes": 5, "nonlocal_blocks": 4, **overrides})


def inception_cfg(**overrides) -> ModelConfig:
    return ModelConfig(**{"backbone": "inceptionv3", "num_classes": 5, "nonlocal_blocks": 3, **overrides})


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------- names and shapes


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_vgg_backbone_names_and_shapes_are_torchvision_features(vgg_state, variant):
    ours = build_model(vgg_cfg(), variant, 224).backbone.state_dict()
    ours = {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("nonlocal_blocks.")}
    theirs = {k: tuple(v.shape) for k, v in vgg_state.items() if k.startswith("features.")}
    assert ours == theirs  # 13 convs x (weight, bias): pool5 has no parameters


def test_inception_backbone_names_and_shapes_are_torchvision_up_to_mixed_6e(inception_state):
    ours = build_model(inception_cfg(), "paper", 299).backbone.state_dict()
    ours = {k: tuple(v.shape) for k, v in ours.items() if not k.startswith("nonlocal_blocks.")}
    cut = ("AuxLogits", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc")
    theirs = {k: tuple(v.shape) for k, v in inception_state.items() if k.split(".")[0] not in cut}
    assert ours == theirs


# --------------------------------------------------------------------------- loading


def test_vgg_weights_load_from_a_path(vgg_file, vgg_state):
    model = build_model(vgg_cfg(weights=str(vgg_file)), "reference", 224)
    ours = model.backbone.state_dict()
    for key in ("features.0.weight", "features.0.bias", "features.10.weight", "features.28.weight"):
        assert torch.equal(ours[key], vgg_state[key]), key
    record = model.weights_record
    assert record["pretrained"] is True and record["backbone"] == "vgg16"
    assert record["path"] == str(vgg_file.resolve())
    assert record["sha256"] == hashlib.sha256(vgg_file.read_bytes()).hexdigest()
    assert record["matched_keys"] == 26  # 13 convs x (weight, bias)
    assert record["ignored_keys"] == 2 and record["ignored_modules"] == ["classifier"]
    assert torch.equal(model.backbone.nonlocal_blocks["pool2"].bn.weight, torch.zeros(128))  # untouched


def test_random_init_record_without_weights():
    model = build_model(vgg_cfg(width=0.125, output_stride=4), "paper", 32)
    assert model.weights_record == {"pretrained": False, "note": "random init"}


def test_imagenet_looks_in_the_hub_cache_only(vgg_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(RunError, match="checkpoints/vgg16-397923af.pth") as exc:
        build_model(vgg_cfg(weights="imagenet"), "paper", 224)
    assert "\n" not in str(exc.value)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vgg16-397923af.pth").symlink_to(vgg_file)
    model = build_model(vgg_cfg(weights="imagenet"), "paper", 224)
    assert model.weights_record["matched_keys"] == 26


def test_inception_weights_load_with_or_without_batch_counters(inception_file, inception_state, tmp_path):
    model = build_model(inception_cfg(weights=str(inception_file)), "paper", 299)
    ours = model.backbone.state_dict()
    for key in ("Mixed_6e.branch7x7dbl_5.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_5b.branch_pool.bn.bias"):
        assert torch.equal(ours[key], inception_state[key]), key
    assert model.weights_record["ignored_modules"] == ["AuxLogits", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"]
    # torchvision's google file predates num_batches_tracked: loading must not require it
    old = {k: v for k, v in inception_state.items() if not k.endswith("num_batches_tracked")}
    model = build_model(inception_cfg(weights=str(save(old, tmp_path / "old.pth"))), "paper", 299)
    assert model.weights_record["matched_keys"] == len(old) - model.weights_record["ignored_keys"]


# --------------------------------------------------------------------------- refusals


def test_missing_key_names_the_key_and_count(vgg_state, tmp_path):
    broken = {k: v for k, v in vgg_state.items() if k != "features.10.weight"}
    path = save(broken, tmp_path / "broken.pth")
    with pytest.raises(RunError, match=r"1 of 26 vgg16 backbone tensors .* 'features.10.weight' is missing") as exc:
        build_model(vgg_cfg(weights=str(path)), "paper", 224)
    assert "\n" not in str(exc.value)


def test_shape_mismatch_names_the_key(vgg_state, tmp_path):
    broken = dict(vgg_state, **{"features.0.weight": torch.zeros(64, 3, 5, 5)})
    path = save(broken, tmp_path / "broken.pth")
    with pytest.raises(RunError, match=r"'features.0.weight' has shape \(64, 3, 5, 5\), ours \(64, 3, 3, 3\)"):
        build_model(vgg_cfg(weights=str(path)), "paper", 224)


def test_inception_file_into_vgg_is_refused(inception_file):
    with pytest.raises(RunError, match="26 of 26 vgg16 backbone tensors"):
        build_model(vgg_cfg(weights=str(inception_file)), "paper", 224)


def test_vgg_file_into_inception_is_refused(vgg_file):
    with pytest.raises(RunError, match="inceptionv3 backbone tensors missing"):
        build_model(inception_cfg(weights=str(vgg_file)), "paper", 299)


def test_reduced_width_with_weights_is_a_config_error(vgg_file):
    with pytest.raises(ConfigError, match="model.width = 0.5: ImageNet weights need width 1.0"):
        build_model(vgg_cfg(width=0.5, weights=str(vgg_file)), "paper", 224)


@pytest.mark.parametrize("content,match", [
    (torch.zeros(3), "not a state dict \\(the file holds a Tensor\\)"),
    ([torch.zeros(3)], "not a state dict \\(the file holds a list\\)"),
    ({"features.0.weight": 1.0}, "entry 'features.0.weight' is a float"),
])
def test_non_state_dict_files_are_refused(content, match, tmp_path):
    path = save(content, tmp_path / "odd.pth")
    with pytest.raises(RunError, match=match):
        build_model(vgg_cfg(weights=str(path)), "paper", 224)


class _Payload:
    """Unpickling this would create a file: weights_only must refuse it before running anything."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_arbitrary_pickle_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "was-run"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": _Payload(sentinel)}, protocol=2))
    with pytest.raises(RunError, match="not a loadable weights file") as exc:
        build_model(vgg_cfg(weights=str(path)), "paper", 224)
    assert not sentinel.exists()
    assert "\n" not in str(exc.value)


def test_corrupt_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(RunError, match="not a loadable weights file"):
        build_model(vgg_cfg(weights=str(junk)), "paper", 224)
    with pytest.raises(RunError, match="no such file"):
        build_model(vgg_cfg(weights=str(tmp_path / "absent.pth")), "paper", 224)


def test_load_pretrained_directly_returns_the_record(vgg_file):
    model = build_model(vgg_cfg(), "paper", 224)
    record = load_pretrained(model, vgg_file)
    assert record["matched_keys"] == 26 and record["sha256"] == hashlib.sha256(vgg_file.read_bytes()).hexdigest()
