"""The released scripts' settings (ablations/released-settings.toml): read as data, applied to the
``reference`` variant only, limited by role / Base / teacher, and reaching the training transform
and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from _runs import smoke_cache  # noqa: F401

from kdcicam.core.config import DataConfig, RunConfig, TeacherRefs, with_overrides
from kdcicam.core.errors import ConfigError
from kdcicam.core.identity import config_hash, identity_dict
from kdcicam.data.base import DatasetIndex
from kdcicam.data.train_augment import train_transform_for
from kdcicam.execution.plan import make_plan
from kdcicam.registry.ablations import DEFAULT_REGISTRY, load_registry
from kdcicam.registry.resolve import Scope, resolve_config
from kdcicam.training.schedule import lr_factor

REFS = TeacherRefs(cls_run="c", loc_run="l")


def _resolve(reg, dataset, backbone, role, variant, *, pool=True, teacher=None, profile="paper"):
    return resolve_config(reg, scope=Scope(dataset, backbone), profile=profile, variant=variant, role=role,
                          context_pool=pool, seed=0, num_classes=200, teacher=teacher,
                          teachers=REFS if role == "distilled" else None)


def _released(reg, scope, **match):
    """The merged overrides of the file's entries for one run (file order, later wins)."""
    out = {}
    for s in reg.released:
        if s.matches(scope, match.get("role"), match.get("pool", True), match.get("teacher")):
            out.update(s.overrides)
    return out


CASES = [("cub", "vgg16"), ("cub", "inceptionv3"), ("ilsvrc", "vgg16")]
RUNS = [("student", False, None), ("student", True, None), ("distilled", True, None),
        ("cls_teacher", True, "cls_teacher"), ("loc_teacher", True, "loc_teacher"),
        ("loc_teacher", True, "loc_teacher_top1")]


@pytest.mark.parametrize("dataset,backbone", CASES)
@pytest.mark.parametrize("role,pool,teacher", RUNS)
def test_reference_runs_take_every_released_setting_of_their_scope(dataset, backbone, role, pool, teacher):
    reg = load_registry()
    cfg = _resolve(reg, dataset, backbone, role, "reference", pool=pool, teacher=teacher)
    expected = _released(reg, f"{dataset}/{backbone}", role=role, pool=pool, teacher=teacher)
    assert expected, "every shipped scope has released settings"
    for key, value in expected.items():
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


@pytest.mark.parametrize("dataset,backbone", CASES)
@pytest.mark.parametrize("role,pool,teacher", RUNS)
def test_paper_variant_never_reads_the_released_settings(dataset, backbone, role, pool, teacher):
    reg = load_registry()
    without = dataclasses.replace(reg, released=())
    assert (_resolve(reg, dataset, backbone, role, "paper", pool=pool, teacher=teacher)
            == _resolve(without, dataset, backbone, role, "paper", pool=pool, teacher=teacher))
    assert _resolve(reg, dataset, backbone, role, "paper", pool=pool, teacher=teacher).train.betas == (0.9, 0.99)


def test_released_values_per_backbone_dataset_and_role():
    reg = load_registry()
    ref = {(d, b, r, p, t): _resolve(reg, d, b, r, "reference", pool=p, teacher=t)
           for d, b in CASES for r, p, t in RUNS}
    # Adam's betas: PyTorch's defaults in every released script
    assert {c.train.betas for c in ref.values()} == {(0.9, 0.999)}
    # teachers' mask thresholds differ per backbone
    assert ref["cub", "vgg16", "cls_teacher", True, "cls_teacher"].loss.fg_threshold_cls == 0.08
    assert ref["cub", "inceptionv3", "cls_teacher", True, "cls_teacher"].loss.fg_threshold_cls == 0.15
    assert ref["cub", "inceptionv3", "loc_teacher", True, "loc_teacher"].loss.fg_threshold_loc == 0.25
    # backbone lr factor and decay per backbone / dataset
    assert ref["cub", "inceptionv3", "student", True, None].train.backbone_lr_mult == 0.6
    assert ref["cub", "inceptionv3", "loc_teacher", True, "loc_teacher"].train.backbone_lr_mult == 0.8
    ilsvrc = ref["ilsvrc", "vgg16", "student", True, None].train
    assert (ilsvrc.backbone_lr_mult, ilsvrc.decay_rate, ilsvrc.halve_every) == (1.0, 0.1, 10)
    # the Base run (dcE_100) never decays; +ConPool decays every 40 epochs
    assert ref["cub", "vgg16", "student", False, None].train.halve_every == 0
    assert ref["cub", "vgg16", "student", True, None].train.halve_every == 40
    # crops: RandomResizedCrop for the student, resize + random crop for the CUB/VGG16 GT-known teacher
    assert ref["cub", "vgg16", "student", True, None].data.random_resized_crop_scale == (0.2, 1.0)
    assert ref["cub", "vgg16", "loc_teacher", True, "loc_teacher"].data.random_resized_crop_scale == ()
    assert ref["cub", "vgg16", "loc_teacher", True, "loc_teacher_top1"].data.random_resized_crop_scale == (0.1, 1.0)


def _fake_data(data_cfg):
    return DatasetIndex(name="synthetic", root=Path("/nonexistent"), classes=tuple("abcd"),
                        train=(), test=(), fingerprint="fp")


@pytest.mark.parametrize("variant,runs", [("paper", 1), ("reference", 2)])
def test_table5_loc_teachers_are_one_run_under_paper_and_two_under_reference(variant, runs):
    reg = load_registry()
    plan = make_plan(reg, ["table5"], scope=Scope(), profile="quick", variant=variant, seeds=[0],
                     open_data=_fake_data)
    by_cell = {c.cell: c.run_id for c in plan.cells}
    assert len({by_cell["loc_teacher_by_gt_known"], by_cell["loc_teacher_by_top1_loc"]}) == runs
    assert len({by_cell["kd_with_teacher_by_gt_known"], by_cell["kd_with_teacher_by_top1_loc"]}) == 2


def test_a_bad_released_entry_names_the_file_and_the_entry(tmp_path):
    dst = tmp_path / "ablations"
    shutil.copytree(DEFAULT_REGISTRY, dst)
    path = dst / "released-settings.toml"
    path.write_text(path.read_text() + '\n[[settings]]\nscope = "cub/vgg16"\nsource = "x"\n'
                    'overrides = { "train.nope" = 1 }\n')
    with pytest.raises(ConfigError, match=r"released-settings.toml: settings #\d+: overrides: unknown key 'train.nope'"):
        load_registry(dst)
    path.write_text('[[settings]]\nscope = "cub/vgg16"\nsource = "x"\nteacher = "nobody"\noverrides = {}\n')
    with pytest.raises(ConfigError, match="settings #1: teacher = 'nobody'"):
        load_registry(dst)


def test_new_fields_enter_the_identity_only_when_set():
    base = RunConfig()
    ident = identity_dict(base)
    assert "random_resized_crop_scale" not in ident["data"]
    assert "decay_rate" not in ident["train"] and "late_drop_epoch" not in ident["train"]
    for key, value in (("data.random_resized_crop_scale", [0.2, 1.0]), ("train.decay_rate", 0.1),
                       ("train.late_drop_epoch", 85)):
        assert config_hash(with_overrides(base, {key: value})) != config_hash(base), key


def test_bad_new_fields_are_one_line_config_errors():
    for key, value in (("data.random_resized_crop_scale", [0.0, 1.0]), ("data.random_resized_crop_scale", [0.5, 0.2]),
                       ("data.random_resized_crop_scale", [0.5]),
                       ("train.decay_rate", 0.0), ("train.late_drop_epoch", -1)):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            with_overrides(RunConfig(), {key: value}).validate()


def test_lr_factor_uses_decay_rate_and_the_late_drop():
    cfg = with_overrides(RunConfig(), {"train.lr_schedule": "reference", "train.epochs": 10,
                                       "train.halve_every": 4, "train.decay_rate": 0.1, "train.late_drop_epoch": 8})
    # e = 5: (1 - 5/10)^0.9 = 0.5358867, one decay step x 0.1 -> 0.05358867
    assert lr_factor(5, cfg) == pytest.approx(0.05358867, abs=1e-7)
    # e = 8: 0.2^0.9 = 0.2349238, two decay steps x 0.01, late drop x 0.1 -> 0.0002349238
    assert lr_factor(8, cfg) == pytest.approx(0.0002349238, abs=1e-9)
    assert lr_factor(7, cfg) == pytest.approx((0.3 ** 0.9) * 0.1, abs=1e-9)  # before the drop


def test_the_config_reaches_the_training_transform():
    rrc = train_transform_for(DataConfig(train_resize=36, crop=32, randaugment=True, randaugment_ops=3,
                                         randaugment_magnitude=10, random_resized_crop_scale=(0.1, 1.0)))
    steps = rrc.geometry.transforms
    assert type(steps[0]).__name__ == "RandomResizedCrop" and tuple(steps[0].scale) == (0.1, 1.0)
    assert (rrc.randaugment.num_ops, rrc.randaugment.magnitude) == (3, 10)
    plain = train_transform_for(DataConfig(train_resize=36, crop=32, randaugment=False))
    assert [type(s).__name__ for s in plain.geometry.transforms][:2] == ["Resize", "RandomCrop"]
    assert plain.randaugment is None


def test_the_runner_builds_its_training_set_with_the_config_transform(monkeypatch):
    from kdcicam.execution import runner

    seen = []
    monkeypatch.setattr(runner, "train_transform_for", lambda data, choices=(): seen.append(data) or (
        _ for _ in ()).throw(RuntimeError("stop")))
    cfg = with_overrides(RunConfig(), {"data.random_resized_crop_scale": [0.3, 1.0], "model.width": 0.0625,
                                       "model.output_stride": 4, "model.nonlocal_blocks": 2, "model.num_classes": 2,
                                       "data.crop": 32, "data.train_resize": 36})

    class Ctx:
        device = __import__("torch").device("cpu")

        def frames_for(self, cfg):
            return None

    run = type("Run", (), {"cfg": cfg})()
    with pytest.raises(RuntimeError, match="stop"):
        runner._training_inputs(run, None, Ctx(), {})
    assert seen == [cfg.data]


def test_dry_run_json_shows_each_runs_resolved_config(smoke_cache, tmp_path):  # noqa: F811
    import json
    import subprocess
    import sys

    from _runs import kdcicam_env

    proc = subprocess.run([sys.executable, "-m", "kdcicam", "ablate", "table5", "--profile", "smoke", "--variant",
                           "reference", "--dry-run", "--json", "--db", f"sqlite:///{tmp_path / 'runs.db'}"],
                          capture_output=True, text=True, env=kdcicam_env(smoke_cache), cwd=tmp_path, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(proc.stdout)["runs"]
    assert {tuple(r["config"]["train"]["betas"]) for r in runs} == {(0.9, 0.999)}
    top1 = [r for r in runs if any("loc_teacher_by_top1_loc" in c for c in r["cells"])]
    assert top1 and top1[0]["config"]["data"]["random_resized_crop_scale"] == [0.1, 1.0]
