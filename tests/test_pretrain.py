"""`kdcicam pretrain` and its pretraining set: a smoke-sized run, determinism, resuming, the set's separation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli import run_cli

from kdcicam.core.errors import ConfigError, RunError
from kdcicam.data import pretraining_set as ps
from kdcicam.training.pretrain import PretrainConfig, cosine_lr, pretrain

TINY = PretrainConfig(epochs=2, batch_size=32, width=0.0625,
                      data=ps.PretrainSetConfig(per_class=3, val_per_class=1, size=32))


def test_help_names_the_command(capsys):
    code, out, _ = run_cli(["pretrain", "--help"], capsys)
    assert code == 0 and "--per-class" in out and "resumes" in out


def test_smoke_run_writes_weights_and_sidecar(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", str(tmp_path), "--epochs", "1", "--per-class", "2",
                              "--val-per-class", "1", "--size", "32", "--width", "0.0625", "--quiet"], capsys)
    assert code == 0, err
    weights = tmp_path / "vgg16_bn-w0.0625.pt"
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    state = torch.load(weights, weights_only=True)
    assert state["features.0.weight"].dtype == torch.float16
    assert not any(k.startswith("nonlocal_blocks.") for k in state)
    from kdcicam.model.weights import file_sha256
    assert sidecar["sha256"] == file_sha256(weights)
    assert sidecar["pretraining_set"]["fingerprint"] == ps.fingerprint(
        ps.PretrainSetConfig(per_class=2, val_per_class=1, size=32))


def test_bad_option_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", str(tmp_path), "--per-class", "1"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "per_class" in err


def test_same_seed_same_weights_and_a_resumed_run_matches(tmp_path):
    whole = torch.load(pretrain(TINY, tmp_path / "a"), weights_only=True)
    again = torch.load(pretrain(TINY, tmp_path / "b"), weights_only=True)
    assert all(torch.equal(whole[k], again[k]) for k in whole)

    def stop_after_first(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(TINY, tmp_path / "c", on_epoch=stop_after_first)
    resumed = torch.load(pretrain(TINY, tmp_path / "c"), weights_only=True)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    other = torch.load(pretrain(PretrainConfig(**{**TINY.__dict__, "seed": 1}), tmp_path / "d"), weights_only=True)
    assert not torch.equal(whole["features.0.weight"], other["features.0.weight"])


def test_a_position_of_another_config_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        pretrain(TINY, tmp_path, on_epoch=lambda r: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(RunError, match="another config"):
        pretrain(PretrainConfig(**{**TINY.__dict__, "lr": 1e-3}), tmp_path)


def test_cosine_lr_by_hand():
    assert cosine_lr(2.0, 0, 4) == 2.0
    assert cosine_lr(2.0, 2, 4) == pytest.approx(1.0)
    assert cosine_lr(2.0, 4, 4) == pytest.approx(0.0)


def test_set_has_sixty_distinct_classes_and_is_deterministic():
    cfg = ps.PretrainSetConfig(per_class=4, val_per_class=1, size=32)
    assert cfg.classes == 60 and len({ps.class_name(c) for c in range(60)}) == 60
    x, y = ps.generate_split(cfg, "train")
    assert x.shape == (180, 32, 32, 3) and x.dtype == np.uint8 and list(np.bincount(y)) == [3] * 60
    assert np.array_equal(ps.render_image(cfg, 7, 2), x[7 * 3 + 2])
    assert ps.generate_split(cfg, "val")[0].shape == (60, 32, 32, 3)
    assert ps.fingerprint(cfg) != ps.fingerprint(ps.PretrainSetConfig(per_class=4, val_per_class=1, size=32, seed=1))


def test_streams_are_not_the_benchmarks():
    # the benchmark draws image (c, k) from SeedSequence([seed, c, k]); the set leads with its tag
    bench = np.random.SeedSequence([0, 3, 5]).generate_state(4)
    ours = np.random.SeedSequence([ps.STREAM_TAG, 0, 3, 5]).generate_state(4)
    assert not np.array_equal(bench, ours)
    import inspect
    source = inspect.getsource(ps)
    assert "from kdcicam.data.synthetic" not in source and "import kdcicam.data.synthetic" not in source


def test_class_hue_families_by_hand():
    # class = shape * 10 + texture; hue family ((3 * shape + texture) % 10) / 10
    assert [ps.class_hue(c) for c in (0, 1, 10, 59)] == [0.0, 0.1, 0.3, 0.4]
    assert ps.class_name(59) == "crescent_speckle"


def test_class_does_not_fix_the_colours():
    cfg = ps.PretrainSetConfig(per_class=40, val_per_class=1, size=32)
    means = np.stack([ps.render_image(cfg, 0, k).reshape(-1, 3).mean(0) for k in range(8)])  # (8, 3)
    assert means.std(0).max() > 10  # the same class in many colours


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="pretrain.size"):
        ps.PretrainSetConfig(size=8).validate()
    with pytest.raises(ConfigError, match="pretrain.epochs"):
        PretrainConfig(epochs=0).validate()


def test_inceptionv3_pretrains_and_its_weights_load_into_the_reduced_network(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", str(tmp_path), "--backbone", "inceptionv3", "--epochs", "1",
                              "--per-class", "2", "--val-per-class", "1", "--size", "64", "--width", "0.0625",
                              "--quiet"], capsys)
    assert code == 0, err
    weights = tmp_path / "inceptionv3-w0.0625.pt"
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["recipe"]["backbone"] == "inceptionv3" and "--backbone inceptionv3" in sidecar["command"]
    from kdcicam.model.backbones import build_backbone
    from kdcicam.model.cicam import CICAM
    from kdcicam.model.weights import load_pretrained
    model = CICAM(build_backbone("inceptionv3", 0.0625, 16, 3, "reference"), 10, None)
    record = load_pretrained(model, weights, expected_sha256=sidecar["sha256"], any_width=True)
    state = torch.load(weights, weights_only=True)
    assert record["matched_keys"] == len(state) > 0
    assert torch.equal(model.backbone.state_dict()["Conv2d_1a_3x3.conv.weight"],
                       state["Conv2d_1a_3x3.conv.weight"].float())
