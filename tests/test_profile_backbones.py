"""Every profile plans every table for both backbones (per-backbone profile settings are data), an
impossible backbone setting is refused while planning, and the smoke profile trains every table
with InceptionV3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _runs import kdcicam_env, smoke_cache  # noqa: F401

from kdcicam.core.config import BACKBONES, VARIANTS
from kdcicam.core.errors import ConfigError
from kdcicam.data.base import DatasetIndex
from kdcicam.execution.plan import make_plan
from kdcicam.registry.ablations import load_registry
from kdcicam.registry.resolve import Scope


def _fake_data(data_cfg):
    return DatasetIndex(name="synthetic", root=Path("/nonexistent"), classes=tuple("abcd"),
                        train=(), test=(), fingerprint="fp")


def _plan(reg, backbone, profile, variant, sets=None):
    return make_plan(reg, sorted(reg.tables), scope=Scope(backbone=backbone), profile=profile, variant=variant,
                     seeds=[0], open_data=_fake_data, cli_overrides=sets)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_profile_plans_every_table_for_both_backbones(backbone, variant):
    reg = load_registry()
    for profile in reg.profiles:
        plan = _plan(reg, backbone, profile, variant)
        assert plan.runs and {r.cfg.model.backbone for r in plan.runs} == {backbone}
        if backbone == "inceptionv3":
            assert {r.cfg.model.output_stride for r in plan.runs} == {16}, profile


def test_an_impossible_backbone_setting_is_refused_while_planning():
    reg = load_registry()
    with pytest.raises(ConfigError, match="model.output_stride = 8: inceptionv3 supports only 16"):
        _plan(reg, "inceptionv3", "quick", "reference", sets={"model.output_stride": 8})
    with pytest.raises(ConfigError, match="data.crop = 32: inceptionv3 needs inputs of at least 43 px"):
        _plan(reg, "inceptionv3", "smoke", "reference", sets={"data.crop": 32})


@pytest.mark.slow
def test_ablate_every_table_at_smoke_with_inceptionv3(smoke_cache, tmp_path):  # noqa: F811
    env = {**kdcicam_env(smoke_cache), "KDCICAM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "kdcicam", "ablate", "all", "--profile", "smoke",
                           "--backbone", "inceptionv3", "--json", "--db", f"sqlite:///{tmp_path / 'runs.db'}",
                           "--artifacts", str(tmp_path / "runs")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout)["runs"]
    assert runs and all(r["status"] == "finished" for r in runs)


def test_weights_none_unsets_a_profile_weights_file():
    """The reduced VGG16 profiles start from the shipped weights; `--set model.weights=none` trains from random
    init (TOML and --set have no null), and InceptionV3, which has no shipped weights, plans without any."""
    reg = load_registry()
    vgg = _plan(reg, "vgg16", "quick", "reference")
    assert {r.cfg.model.weights for r in vgg.runs} == {"shipped:vgg16_bn-w0.125"}
    assert all(r.cfg.model.weights_sha256 for r in vgg.runs)
    scratch = _plan(reg, "vgg16", "quick", "reference", {"model.weights": "none"})
    assert {(r.cfg.model.weights, r.cfg.model.weights_sha256) for r in scratch.runs} == {(None, None)}
    assert {r.run_id for r in scratch.runs}.isdisjoint({r.run_id for r in vgg.runs})
    inception = _plan(reg, "inceptionv3", "quick", "reference")
    assert {r.cfg.model.weights for r in inception.runs} == {None}
