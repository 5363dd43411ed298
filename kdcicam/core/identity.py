"""Run identity: which config keys make a run what it is, and the hash that names it.

A run's id is the hash of its resolved :class:`~kdcicam.core.config.RunConfig` (plus the dataset
fingerprint), reduced by :data:`IDENTITY_RULES`. Each dotted key has one rule:

- ``ALWAYS``: part of the identity at every value;
- ``WHEN_CHANGED``: part of the identity only when it differs from its default, so a key added
  after runs were stored leaves their ids as they are;
- ``NEVER``: how a run is executed or audited, not what it computes (device, loader workers,
  checkpoint frequency, test-split audits): never part of it.

A key without a rule is ``WHEN_CHANGED``: adding a config field never changes an existing id. The
rules are versioned (:data:`IDENTITY_VERSION`); ``tests/test_identity.py`` pins the ids of fixed
configs, and docs/identity.md says what an intended change takes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kdcicam.core.config import RunConfig, to_dict

IDENTITY_VERSION = 2


class Rule(enum.Enum):
    ALWAYS = "always"
    WHEN_CHANGED = "when changed"
    NEVER = "never"


# Every key that is part of the identity at every value. Version 2 added eval.metric_version (the
# standard protocol's box rule became wsolevaluation's): every id of version 1 changed with it.
_ALWAYS: tuple[str, ...] = (
    "profile", "variant",
    "data.dataset", "data.root", "data.train_resize", "data.crop", "data.randaugment", "data.randaugment_ops",
    "data.randaugment_magnitude", "data.val_fraction", "data.split_seed",
    "data.synth.classes", "data.synth.per_class", "data.synth.size", "data.synth.context_correlation",
    "data.synth.test_context_correlation", "data.synth.test_fraction", "data.synth.seed",
    "data.synth.body_class_evidence", "data.synth.part_scale", "data.synth.body_scale", "data.synth.body_aspect",
    "data.synth.side_jitter", "data.synth.grayscale_fraction", "data.synth.noise", "data.synth.jpeg_quality",
    "model.backbone", "model.num_classes", "model.width", "model.output_stride", "model.nonlocal_blocks",
    "model.context_pool", "model.update_rate", "model.weights",
    "loss.role", "loss.alpha", "loss.T_cls", "loss.T_loc", "loss.mu", "loss.eta", "loss.beta", "loss.delta",
    "loss.fg_threshold_cls", "loss.fg_threshold_loc", "loss.log_eps",
    "train.lr", "train.batch_size", "train.epochs", "train.betas", "train.weight_decay", "train.lr_schedule",
    "train.halve_every", "train.backbone_lr_mult", "train.seed", "train.deterministic", "train.amp",
    "train.channels_last",
    "eval.theta", "eval.test_resize", "eval.test_crop", "eval.iou_threshold", "eval.maxbox_thresholds",
    "eval.maxbox_ious", "eval.metric_version",
    "teachers.cls_run", "teachers.cls_select", "teachers.loc_run", "teachers.loc_select",
)
# Keys that joined after runs were stored: part of the identity only away from their default.
_WHEN_CHANGED: tuple[str, ...] = (
    "eval.theta_grid", "eval.theta_metric", "eval.select_on", "model.batch_norm", "eval.box_rule",
    "data.random_resized_crop_scale", "data.epsilon_augment", "data.loc_crop_scale", "data.randaugment_loc",
    "train.decay_rate", "train.late_drop_epoch", "model.heatmap_function", "model.weights_sha256",
)
# How a run is executed, not what it computes: resuming on another device, with more loader workers,
# the decoded-frame cache (the same images, tests/test_data_cache.py), compiled or with finer
# checkpoints is the same run. The test-split and test-resize audits only add numbers no decision reads.
_NEVER: tuple[str, ...] = ("train.device", "train.num_workers", "train.data_cache", "train.compile",
                           "train.checkpoint_every", "eval.audit_epochs", "eval.resize_grid")

IDENTITY_RULES: Mapping[str, Rule] = {
    **{k: Rule.ALWAYS for k in _ALWAYS},
    **{k: Rule.WHEN_CHANGED for k in _WHEN_CHANGED},
    **{k: Rule.NEVER for k in _NEVER},
}

# Within one training setting every seed differs in its seed and its teachers' run ids (whether a
# teacher is there is part of the setting).
_SEED_KEY = "train.seed"
_TEACHER_RUN_KEYS = ("teachers.cls_run", "teachers.loc_run")
_ABSENT = object()


def rule_of(dotted: str) -> Rule:
    """The identity rule of a dotted config key (``WHEN_CHANGED`` for a key without one)."""
    return IDENTITY_RULES.get(dotted, Rule.WHEN_CHANGED)


@functools.cache
def _defaults() -> dict[str, Any]:
    return to_dict(RunConfig())


def _default_at(dotted: str) -> Any:
    node: Any = _defaults()
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


@functools.cache
def _section_of() -> dict[type, str]:
    """Config dataclass type -> its dotted place in :class:`RunConfig` (``SynthConfig`` -> ``data.synth``)."""
    out: dict[type, str] = {RunConfig: ""}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                out.setdefault(type(default), f"{prefix}{f.name}")
                walk(type(default), f"{prefix}{f.name}.")

    walk(RunConfig, "")
    return out


def _reduce(node: dict[str, Any], prefix: str, *, setting: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if setting and dotted == _SEED_KEY:
            continue
        if isinstance(value, dict) and dotted not in IDENTITY_RULES:
            reduced = _reduce(value, f"{dotted}.", setting=setting)
            if reduced or any(k.startswith(f"{dotted}.") for k in IDENTITY_RULES):
                out[key] = reduced  # a section added with all its keys at their defaults is left out
            continue
        rule = rule_of(dotted)
        if rule is Rule.NEVER or (rule is Rule.WHEN_CHANGED and value == _default_at(dotted)):
            continue
        out[key] = (value is not None) if setting and dotted in _TEACHER_RUN_KEYS else value
    return out


def identity_dict(config: Any) -> dict[str, Any]:
    """The part of a config that forms its identity, as a nested dict.

    Args:
        config: a :class:`RunConfig`, one of its sections (e.g. a ``SynthConfig``, placed where it sits
            in a RunConfig), or a stored run config dict (a key it lacks stays absent).

    Returns:
        The config without its ``NEVER`` keys and its ``WHEN_CHANGED`` keys at their defaults. A
        dataclass that is no section of RunConfig is returned whole.
    """
    if isinstance(config, Mapping):
        return _reduce(dict(config), "", setting=False)
    section = _section_of().get(type(config))
    if section is None:
        return to_dict(config)
    return _reduce(to_dict(config), f"{section}." if section else "", setting=False)


def config_hash(cfg: Any, *extra: str) -> str:
    """Stable 16-hex-digit hash of a config's :func:`identity_dict` and extra identity strings (such
    as a dataset fingerprint)."""
    payload = json.dumps(identity_dict(cfg), sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(payload.encode())
    for item in extra:
        h.update(b"\0" + item.encode())
    return h.hexdigest()[:16]


def training_setting(config: Mapping[str, Any]) -> str:
    """A 12-hex-digit key naming a stored run config's training setting, the same for every seed of it:
    its identity without the seed, each teacher run reduced to whether there is one."""
    text = json.dumps(_reduce(dict(config), "", setting=True), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run config with every key it lacks at its default (a run stored before a key existed
    used its default)."""
    def merge(defaults: Any, given: Any) -> Any:
        if isinstance(defaults, dict) and isinstance(given, dict):
            return {**defaults, **{k: merge(defaults.get(k), v) for k, v in given.items()}}
        return given

    return merge(_defaults(), dict(config))
