"""Run identity (kdcicam.core.identity): the ids of fixed configs are pinned, so a change to the
identity rules or to a config default fails here; an intended change bumps IDENTITY_VERSION and
these ids together (docs/identity.md)."""

from __future__ import annotations

import dataclasses

import pytest

from kdcicam.core import identity
from kdcicam.core.config import RunConfig, SynthConfig, to_dict, with_overrides
from kdcicam.core.identity import (
    IDENTITY_RULES,
    IDENTITY_VERSION,
    Rule,
    config_hash,
    identity_dict,
    rule_of,
    training_setting,
    with_defaults,
)

SMOKE = {"model.width": 0.0625, "model.batch_norm": True, "model.output_stride": 4, "model.nonlocal_blocks": 2,
         "data.train_resize": 36, "data.crop": 32, "data.randaugment": False, "eval.test_resize": 36,
         "eval.test_crop": 32, "eval.audit_epochs": True, "eval.resize_grid": [32, 49], "train.epochs": 1,
         "train.batch_size": 16, "train.lr": 0.002, "data.synth.classes": 4, "data.synth.per_class": 24,
         "data.synth.size": 40, "model.num_classes": 4}
QUICK = {"model.width": 0.125, "model.batch_norm": True, "model.output_stride": 8, "data.train_resize": 108,
         "data.crop": 96, "data.randaugment": False, "eval.test_resize": 108, "eval.test_crop": 96,
         "train.epochs": 5, "train.batch_size": 32, "train.lr": 0.002, "train.lr_schedule": "cosine",
         "data.synth.size": 96, "data.synth.body_class_evidence": 0.4, "model.num_classes": 10}
PAPER_REF = {"profile": "paper", "data.dataset": "cub", "data.root": "/data/CUB_200_2011",
             "train.lr_schedule": "reference", "train.backbone_lr_mult": 0.1, "train.halve_every": 14,
             "train.compile": "reduce-overhead", "model.weights": "vgg16.pth"}

# name -> (overrides, config_hash(cfg), config_hash(cfg, "fp0123"), training_setting(to_dict(cfg)))
GOLDEN = {
    "defaults": ({}, "dd78039d6a81ed82", "0173997f238637a9", "bd42fbe24f4a"),
    "smoke-base-paper": ({**SMOKE, "profile": "smoke", "variant": "paper", "model.context_pool": False},
                         "f5cbc1d037e8b3ed", "145913a6d60e1108", "ee0c6d75b847"),
    "quick-conpool-reference": ({**QUICK, "train.seed": 2}, "67eaf1569cdd78fa", "40f4d0c54fa2b648", "c16757f58bff"),
    "paper-cls-teacher": ({**PAPER_REF, "loss.role": "cls_teacher"},
                          "11411dc4dcadd6d0", "cafd34a59fa82a03", "fd3ced55f9b3"),
    "medium-loc-teacher-test-selected": (
        {**QUICK, "profile": "medium", "train.epochs": 12, "loss.role": "loc_teacher", "eval.select_on": "test",
         "eval.theta_metric": "top1_loc", "eval.audit_epochs": True},
        "9cdf0bce0782ba86", "c714edd08113949a", "1557aaab6b2a"),
    "quick-distilled": ({**QUICK, "loss.role": "distilled", "teachers.cls_run": "0123456789abcdef",
                         "teachers.loc_run": "fedcba9876543210", "eval.theta_grid": [0.1, 0.2]},
                        "5605f04628e8fb8b", "5c1a90450df246fb", "b34deb29aa22"),
}


def test_identity_version_is_the_one_the_golden_ids_belong_to():
    assert IDENTITY_VERSION == 2


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_ids(name):
    overrides, plain, with_fingerprint, setting = GOLDEN[name]
    cfg = with_overrides(RunConfig(), overrides)
    assert config_hash(cfg) == plain
    assert config_hash(cfg, "fp0123") == with_fingerprint
    assert config_hash(to_dict(cfg), "fp0123") == with_fingerprint  # a stored config names the same run
    assert training_setting(to_dict(cfg)) == setting


def test_golden_synthetic_cache_keys():
    # the synthetic benchmark's cache folder is named by its SynthConfig's hash
    assert config_hash(SynthConfig()) == "26dd90cc97ebabed"
    assert config_hash(SynthConfig(classes=4, per_class=24, size=40)) == "e5a81cb88af694c3"


def test_every_rule_names_a_config_key():
    def leaves(node, prefix=""):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    assert set(IDENTITY_RULES) <= set(leaves(to_dict(RunConfig())))  # no rule for a key that is gone
    assert rule_of("train.a_key_added_later") is Rule.WHEN_CHANGED


def test_never_keys_leave_the_id_unchanged_and_always_keys_change_it():
    base = RunConfig()
    assert config_hash(with_overrides(base, {"train.device": "cpu", "train.num_workers": 4,
                                             "eval.resize_grid": [256]})) == config_hash(base)
    assert config_hash(with_overrides(base, {"train.lr": 1e-3})) != config_hash(base)
    assert config_hash(with_overrides(base, {"eval.select_on": "test"})) != config_hash(base)
    assert config_hash(with_overrides(base, {"eval.select_on": "val"})) == config_hash(base)


def _with_new_field(monkeypatch, section: str, name: str, default, section_cls=None):
    """RunConfig with one more field (``section.name``) at ``default``, as a later version would add it."""
    owner = section_cls or type(getattr(RunConfig(), section))
    grown = dataclasses.make_dataclass(owner.__name__, [(name, type(default), dataclasses.field(default=default))],
                                       bases=(owner,), frozen=True)
    run_cls = dataclasses.make_dataclass("RunConfig", [(section, grown, dataclasses.field(default_factory=grown))],
                                         bases=(RunConfig,), frozen=True)
    monkeypatch.setattr(identity, "RunConfig", run_cls)
    identity._defaults.cache_clear()
    identity._section_of.cache_clear()
    return run_cls, grown


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_new_field_at_its_default_leaves_every_id_unchanged(monkeypatch, name):
    overrides, plain, with_fingerprint, setting = GOLDEN[name]
    run_cls, _ = _with_new_field(monkeypatch, "train", "grad_clip", 0.0)
    try:
        cfg = with_overrides(run_cls(), overrides)
        assert "grad_clip" in to_dict(cfg)["train"]
        assert config_hash(cfg) == plain
        assert config_hash(cfg, "fp0123") == with_fingerprint
        assert training_setting(to_dict(cfg)) == setting
        assert config_hash(with_overrides(cfg, {"train.grad_clip": 1.0})) != plain  # set: a new run
    finally:
        identity._defaults.cache_clear()
        identity._section_of.cache_clear()


def test_a_new_section_at_its_defaults_leaves_the_id_unchanged(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class AugConfig:
        mixup: float = 0.0

    run_cls = dataclasses.make_dataclass("RunConfig", [("aug", AugConfig, dataclasses.field(default_factory=AugConfig))],
                                         bases=(RunConfig,), frozen=True)
    monkeypatch.setattr(identity, "RunConfig", run_cls)
    identity._defaults.cache_clear()
    identity._section_of.cache_clear()
    try:
        assert config_hash(run_cls()) == GOLDEN["defaults"][1]
        assert config_hash(run_cls(aug=AugConfig(mixup=0.2))) != GOLDEN["defaults"][1]
    finally:
        identity._defaults.cache_clear()
        identity._section_of.cache_clear()


def test_identity_dict_of_a_stored_config_keeps_what_it_has():
    stored = {"train": {"lr": 0.1, "device": "cuda"}, "eval": {"select_on": "val", "theta": 0.2}}
    assert identity_dict(stored) == {"train": {"lr": 0.1}, "eval": {"theta": 0.2}}


def test_training_setting_drops_the_seed_and_the_teachers_run_ids():
    a = to_dict(with_overrides(RunConfig(), {"train.seed": 0, "loss.role": "distilled", "teachers.cls_run": "a"}))
    b = to_dict(with_overrides(RunConfig(), {"train.seed": 1, "loss.role": "distilled", "teachers.cls_run": "b"}))
    c = to_dict(with_overrides(RunConfig(), {"train.seed": 1, "loss.role": "distilled", "teachers.loc_run": "b"}))
    assert training_setting(a) == training_setting(b) != training_setting(c)


def test_with_defaults_fills_what_a_stored_config_lacks():
    full = with_defaults({"train": {"lr": 0.5}})
    assert full["train"]["lr"] == 0.5
    assert full["train"]["epochs"] == RunConfig().train.epochs
    assert full["eval"] == to_dict(RunConfig())["eval"]
