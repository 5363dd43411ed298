"""Typed, frozen run configuration.

A run is fully described by one :class:`RunConfig`. It is built at the edge (CLI options, a
config file, a registry cell, a profile), validated there, and then passed down explicitly: no
module reads globals or environment variables for settings. The resolved config is what gets
stored with a run and hashed into its identity (:mod:`kdcicam.core.identity`).

Field names follow the paper's symbols where there is one (``update_rate`` = λ of Eq. 7,
``alpha`` = α of Eq. 16, ``mu``/``eta`` = μ/η of Eq. 19, ``beta``/``delta`` = β/δ of Eq. 21).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from kdcicam.core.config_dicts import from_dict, to_dict, with_overrides
from kdcicam.core.errors import ConfigError
from kdcicam.core.limits import check_limit

# from_dict, to_dict and with_overrides (kdcicam.core.config_dicts) are imported from here by many modules
__all__ = [
    "BACKBONES", "BOX_RULES", "DATASETS", "DEFAULT_THETA_GRID", "METRIC_VERSION", "PROTOCOLS", "ROLES", "SELECTIONS",
    "SELECT_ON", "VARIANTS", "Backbone", "BoxRule", "DataConfig", "DatasetName", "EvalConfig", "LossConfig",
    "ModelConfig", "Protocol", "Role", "RunConfig", "SelectOn", "Selection", "SynthConfig", "TeacherRefs",
    "ThetaMetric", "TrainConfig", "Variant", "from_dict", "metric_version_of", "to_dict", "with_overrides",
]

Variant = Literal["paper", "reference"]
Role = Literal["student", "cls_teacher", "loc_teacher", "distilled"]
Backbone = Literal["vgg16", "inceptionv3"]
DatasetName = Literal["synthetic", "cub", "ilsvrc", "wsol"]
Protocol = Literal["paper", "standard"]
Selection = Literal["top1_loc", "gt_known_loc", "top1_cls", "last"]
SelectOn = Literal["val", "test"]
ThetaMetric = Literal["gt_known_loc", "top1_loc"]
BoxRule = Literal["wsolevaluation", "continuous"]  # the standard protocol's box rule (evaluation/metrics.py)

VARIANTS: tuple[str, ...] = get_args(Variant)
BACKBONES: tuple[str, ...] = get_args(Backbone)
DATASETS: tuple[str, ...] = get_args(DatasetName)
ROLES: tuple[str, ...] = get_args(Role)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
BOX_RULES: tuple[str, ...] = get_args(BoxRule)
# Version of the standard protocol's box metrics: 1 = continuous IoU, largest 8-connected component
# (runs stored before eval.metric_version existed); 2 = wsolevaluation's contours and "+1" IoU.
METRIC_VERSION = 2
SELECTIONS: tuple[str, ...] = get_args(Selection)
SELECT_ON: tuple[str, ...] = get_args(SelectOn)
# θ candidates of the "val" and "oracle" threshold policies: 0.00, 0.05, ..., 0.95
DEFAULT_THETA_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the embedded confounded-context benchmark (``kdcicam data synth``).

    Each knob models one of the paper's problems or a nuisance (docs/synthetic.md); none is tuned
    so that a particular method wins. Context mixing: with probability ``context_correlation`` an
    image shows its class's preferred context, otherwise a context drawn uniformly from all
    ``classes`` contexts, so P(preferred) = corr + (1 - corr) / classes and 0 means independent.
    """

    classes: int = 10  # number of object classes (each with its preferred context)
    per_class: int = 200  # images per class (train + test)
    size: int = 64  # nominal image side in pixels (actual sizes vary, non-square)
    context_correlation: float = 0.9  # train: weight of the class's preferred context (1 = always)
    test_context_correlation: float = 0.0  # same, in the test split (0 = context independent of class)
    test_fraction: float = 0.25  # share of each class written as test images
    seed: int = 0  # >= 0; image (class c, index k) is drawn from SeedSequence([seed, c, k])
    body_class_evidence: float = 0.2  # tint of the shared body toward the class colour (0 = none)
    part_scale: float = 0.35  # class-specific part's radius / body's semi-major axis
    body_scale: tuple[float, float] = (0.25, 0.6)  # body's long axis / shorter image side (range)
    body_aspect: tuple[float, float] = (0.35, 0.8)  # body's short / long axis (range)
    side_jitter: float = 1.25  # each image side in [size / jitter, size * jitter] (log-uniform)
    grayscale_fraction: float = 0.02  # share of images written as single-channel JPEGs
    noise: float = 0.03  # std of additive Gaussian pixel noise (intensities in [0, 1])
    jpeg_quality: int = 90  # JPEG quality of the written images

    def validate(self) -> SynthConfig:
        """Check every field's range; raise a one-line ConfigError naming the option.

        Returns:
            ``self`` unchanged.
        """
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"data.synth.{key} = {getattr(self, key)!r}: {why}")

        need(self.classes >= 2, "classes", "must be >= 2")
        need(self.per_class >= 4, "per_class", "must be >= 4")
        need(self.size >= 32, "size", "must be >= 32")
        check_limit("image_side", self.size, "data.synth.size")
        check_limit("images", self.classes * self.per_class, "data.synth.classes x data.synth.per_class")
        need(0.0 <= self.context_correlation <= 1.0, "context_correlation", "must be in [0, 1]")
        need(0.0 <= self.test_context_correlation <= 1.0, "test_context_correlation", "must be in [0, 1]")
        need(0.0 < self.test_fraction < 1.0, "test_fraction", "must be in (0, 1)")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(0.0 <= self.body_class_evidence <= 1.0, "body_class_evidence", "must be in [0, 1]")
        need(0.0 < self.part_scale <= 0.5, "part_scale", "must be in (0, 0.5]")
        lo, hi = self.body_scale
        need(0.0 < lo <= hi <= 0.7, "body_scale", "must be (low, high) with 0 < low <= high <= 0.7")
        lo, hi = self.body_aspect
        need(0.0 < lo <= hi <= 1.0, "body_aspect", "must be (low, high) with 0 < low <= high <= 1")
        need(1.0 <= self.side_jitter <= 2.0, "side_jitter", "must be in [1, 2]")
        need(0.0 <= self.grayscale_fraction <= 1.0, "grayscale_fraction", "must be in [0, 1]")
        need(self.noise >= 0.0, "noise", "must be >= 0")
        need(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [1, 100]")
        return self


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "synthetic"
    root: str | None = None  # dataset folder; None = the synthetic benchmark's cache folder
    train_resize: int = 256  # train: resize the image to this square size, then random-crop
    crop: int = 224  # train crop side (the network's input size)
    randaugment: bool = True  # RandAugment on train images, as the paper says (§4.2)
    randaugment_ops: int = 2  # RandAugment N
    randaugment_magnitude: int = 9  # RandAugment M
    random_resized_crop_scale: tuple[float, ...] = ()  # train: (min, max) = RandomResizedCrop(crop, scale)
    # replaces resize + random crop (the released code's crops); () = resize + random crop
    epsilon_augment: bool = False  # distilled, ε per sample: ε drawn with each image's augmentation, per ε:
    # RandAugment on ε = 0 only (and ε = 2 with randaugment_loc), loc_crop_scale for ε = 2 (the released student)
    loc_crop_scale: tuple[float, ...] = ()  # epsilon_augment: the ε = 2 samples' RandomResizedCrop scale; () = the same
    randaugment_loc: bool = False  # epsilon_augment: RandAugment on the ε = 2 samples too
    val_fraction: float = 0.1  # share of each class's train images held out for validation
    split_seed: int = 0  # seed of the validation split (independent of the run seed)
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass(frozen=True)
class ModelConfig:
    backbone: Backbone = "vgg16"
    num_classes: int = 200
    width: float = 1.0  # channel multiplier; 1.0 is the paper's network exactly
    output_stride: int = 16  # 16 = paper (VGG16 pool5 removed); 8 or 4 keep fewer pools (reduced)
    nonlocal_blocks: int = 4  # 4 for VGG16 on CUB, 3 otherwise (§4.2)
    batch_norm: bool = False  # VGG16 only: BN after every conv (vgg16_bn); the paper's VGG16 has none
    context_pool: bool = True  # False = Base (NL-CCAM): X^e = X, no pool
    update_rate: float = 0.01  # λ of Eq. 7
    heatmap_function: Literal["quadratic", "sum_1"] = "quadratic"  # γ of Eq. 3: the variant's quadratic,
    # or the released ILSVRC scripts' sum_1 (top-1 map minus a weighted mean of the last 20)
    weights: str | None = None  # torchvision-format file, "imagenet" (hub cache) or "shipped:NAME"; None = random init
    weights_sha256: str | None = None  # pins the weights file's content (hex sha256); None = not pinned


@dataclass(frozen=True)
class LossConfig:
    """Which loss recipe trains the run (its role) and the weights of every term."""

    role: Role = "student"
    alpha: float = 0.8  # α of Eq. 16 (distillation strength)
    T_cls: float = 15.0  # T^cls of Eq. 11-12
    T_loc: float = 15.0  # T^loc of Eq. 14-15
    mu: float = 1.0  # μ of Eq. 19 (fore loss)
    eta: float = 0.04  # η of Eq. 19 (area loss, cls teacher)
    beta: float = 0.5  # β of Eq. 21 (diff loss)
    delta: float = 0.0  # δ of Eq. 21 (area loss, loc teacher)
    fg_threshold_cls: float = 0.08  # θ of the cls teacher's foreground mask (reference code)
    fg_threshold_loc: float = 0.0  # θ of the loc teacher's foreground mask (reference code)
    log_eps: float = 1e-6  # ε clamping the probability difference inside Eq. 20's log (paper variant)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 5e-4
    batch_size: int = 6
    epochs: int = 100
    betas: tuple[float, float] = (0.9, 0.99)  # Adam(β1, β2), §4.2
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine", "reference"] = "constant"  # reference: poly(0.9) + halving
    halve_every: int = 0  # reference schedule: lr x 0.5 every this many epochs (0 = never)
    backbone_lr_mult: float = 1.0  # lr of backbone + context conv relative to the classifier's
    decay_rate: float = 0.5  # reference schedule: lr x decay_rate every halve_every epochs
    late_drop_epoch: int = 0  # reference schedule: lr x 0.1 from this (0-based) epoch on; 0 = never
    seed: int = 0
    deterministic: bool = False  # bit-identical CPU runs for the same seed
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    num_workers: int = 0  # data-loader processes of the per-image (PIL) path
    data_cache: bool = True  # decode each split once, augment whole batches on the device (same images)
    compile: Literal["off", "default", "reduce-overhead"] = "off"  # torch.compile the training step's model
    # ("reduce-overhead" adds CUDA graphs: for the paper's batch of 6 on a GPU); same math, other kernels
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every: int = 0  # also save the position every this many steps (0 = at epoch ends only)


@dataclass(frozen=True)
class EvalConfig:
    theta: float = 0.14  # θ: CAM threshold for the box (fraction of the heatmap's max)
    test_resize: int = 344  # paper protocol: square resize S x S ...
    test_crop: int = 224  # ... then centre crop C (and the standard protocol's input size)
    iou_threshold: float = 0.5
    maxbox_thresholds: int = 100  # MaxBoxAccV2: number of CAM thresholds in [0, 1)
    maxbox_ious: tuple[float, ...] = (0.3, 0.5, 0.7)  # MaxBoxAccV2 IoU levels
    theta_grid: tuple[float, ...] = DEFAULT_THETA_GRID  # θ candidates of the val / oracle θ policies (+ θ)
    theta_metric: ThetaMetric = "gt_known_loc"  # what the val / oracle θ policies maximise
    select_on: SelectOn = "val"  # split whose per-epoch metrics pick best_* checkpoints ("test": the authors')
    audit_epochs: bool = False  # also score the test split every epoch, for the report's audit only
    resize_grid: tuple[int, ...] = ()  # paper protocol: test resizes S to audit (S chosen on val vs on test)
    box_rule: BoxRule = "wsolevaluation"  # standard protocol: wsolevaluation's boxes, or "continuous"
    metric_version: int = METRIC_VERSION  # which definition produced the stored metrics (always identity)


@dataclass(frozen=True)
class TeacherRefs:
    """The teacher runs a distilled student learns from (by run id) and how each was selected."""

    cls_run: str | None = None
    cls_select: Selection = "top1_cls"
    loc_run: str | None = None
    loc_select: Selection = "gt_known_loc"


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. Its hash (plus dataset fingerprint) is the run's identity."""

    profile: str = "quick"  # smoke | quick | medium | paper | custom
    variant: Variant = "reference"  # "paper" equations vs the authors' "reference" code
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    teachers: TeacherRefs = field(default_factory=TeacherRefs)

    def validate(self) -> RunConfig:
        """Check cross-field and range constraints; raise ConfigError naming the key."""
        _check(0.0 <= self.eval.theta <= 1.0, "eval.theta", self.eval.theta, "must be in [0, 1]")
        _check(0.0 < self.eval.iou_threshold <= 1.0, "eval.iou_threshold", self.eval.iou_threshold,
               "must be in (0, 1]")
        _check(self.eval.metric_version == METRIC_VERSION, "eval.metric_version", self.eval.metric_version,
               f"must be {METRIC_VERSION} (the only definition this version computes)")
        for i, size in enumerate(self.eval.resize_grid):
            _check(size >= self.eval.test_crop, f"eval.resize_grid[{i}]", size,
                   f"must be >= eval.test_crop ({self.eval.test_crop}): give larger sizes, or "
                   "--set eval.resize_grid=[] for no resize audit")
        for i, t in enumerate(self.eval.theta_grid):
            _check(0.0 <= t <= 1.0, f"eval.theta_grid[{i}]", t, "must be in [0, 1]")
        _check(self.eval.test_crop <= self.eval.test_resize, "eval.test_crop", self.eval.test_crop,
               "must not exceed eval.test_resize")
        _check(self.data.crop <= self.data.train_resize, "data.crop", self.data.crop,
               "must not exceed data.train_resize")
        _check(0.0 <= self.data.val_fraction < 1.0, "data.val_fraction", self.data.val_fraction,
               "must be in [0, 1)")
        if self.data.dataset == "synthetic":
            self.data.synth.validate()
        _check(0 <= self.data.randaugment_magnitude <= 30, "data.randaugment_magnitude",
               self.data.randaugment_magnitude, "must be in [0, 30]")
        _check(self.data.randaugment_ops >= 0, "data.randaugment_ops", self.data.randaugment_ops, "must be >= 0")
        _check(self.model.width > 0, "model.width", self.model.width, "must be > 0")
        _check(self.model.weights is None or self.model.width == 1.0 or self.model.weights.startswith("shipped:"),
               "model.width", self.model.width, "ImageNet weights (model.weights) need width 1.0")
        sha = self.model.weights_sha256
        _check(sha is None or (len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha)),
               "model.weights_sha256", sha, "must be 64 lowercase hex digits")
        _check(self.model.output_stride in (4, 8, 16), "model.output_stride",
               self.model.output_stride, "must be 4, 8 or 16")
        if self.model.backbone == "inceptionv3":  # its stride is fixed; Mixed_6a needs >= 43 px (model/backbones.py)
            _check(self.model.output_stride == 16, "model.output_stride", self.model.output_stride,
                   "inceptionv3 supports only 16 (the profiles set it per backbone; or --set model.output_stride=16)")
            for key in ("data.crop", "eval.test_crop"):
                section, name = key.split(".")
                size = getattr(getattr(self, section), name)
                _check(size >= 43, key, size, "inceptionv3 needs inputs of at least 43 px")
        _check(self.model.update_rate >= 0, "model.update_rate", self.model.update_rate,
               "must be >= 0 (λ of Eq. 7)")
        _check(0.0 <= self.loss.alpha <= 1.0, "loss.alpha", self.loss.alpha, "must be in [0, 1]")
        for key in ("T_cls", "T_loc"):
            _check(getattr(self.loss, key) > 0, f"loss.{key}", getattr(self.loss, key), "must be > 0")
        for key in ("mu", "eta", "beta", "delta"):
            _check(getattr(self.loss, key) >= 0, f"loss.{key}", getattr(self.loss, key), "must be >= 0")
        _check(self.train.lr > 0, "train.lr", self.train.lr, "must be > 0")
        _check(0.0 < self.train.decay_rate <= 1.0, "train.decay_rate", self.train.decay_rate, "must be in (0, 1]")
        _check(self.train.late_drop_epoch >= 0, "train.late_drop_epoch", self.train.late_drop_epoch, "must be >= 0")
        for key in ("random_resized_crop_scale", "loc_crop_scale"):
            scale = getattr(self.data, key)
            _check(scale == () or (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0), f"data.{key}",
                   scale, "must be [] (resize + random crop) or [min, max] with 0 < min <= max <= 1")
        _check(self.train.batch_size >= 1, "train.batch_size", self.train.batch_size, "must be >= 1")
        _check(self.train.epochs >= 1, "train.epochs", self.train.epochs, "must be >= 1")
        check_limit("epochs", self.train.epochs, "train.epochs")
        for key, side in (("data.train_resize", self.data.train_resize), ("data.crop", self.data.crop),
                          ("eval.test_resize", self.eval.test_resize), ("eval.test_crop", self.eval.test_crop)):
            check_limit("image_side", side, key)
        _check(self.train.checkpoint_every >= 0, "train.checkpoint_every", self.train.checkpoint_every, "must be >= 0")
        _check(0 <= self.train.seed < 2**31, "train.seed", self.train.seed, "must be in [0, 2^31)")
        if self.loss.role == "distilled":
            _check(self.teachers.cls_run is not None or self.teachers.loc_run is not None,
                   "teachers", None, "a distilled student needs at least one teacher run")
        return self


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {why}")


def metric_version_of(config: Mapping[str, Any]) -> int:
    """The metric version of a stored run config: its ``eval.metric_version``.

    A resolved config stored before the key existed holds every other ``eval`` key (e.g.
    ``maxbox_ious``) but not this one: version 1. A partial config (hand-written, tests) says
    nothing about it: the current version.
    """
    section = config.get("eval")
    if not isinstance(section, Mapping):
        return METRIC_VERSION
    if "metric_version" in section:
        return int(section["metric_version"])
    return 1 if "maxbox_ious" in section else METRIC_VERSION
