"""The CI-CAM network: backbones, non-local blocks, CAM heads, the causal context pool (Eq. 7), Eq. 8."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcicam.core.config import ModelConfig
from kdcicam.core.errors import ConfigError
from kdcicam.model.backbones import (
    InceptionV3Backbone,
    VGG16Backbone,
    build_backbone,
    scale_channels,
    select_sites,
)
from kdcicam.model.cicam import CICAM, cam_module, enhance
from kdcicam.model.context_pool import (
    BN_EPS,
    POOL_RULES,
    CausalContextPool,
    pool_contributions,
    standardize,
    updated_pool,
)
from kdcicam.model.factory import build_model, param_groups
from kdcicam.model.nonlocal_block import NonLocalBlock, attention_inner_channels

EPS = BN_EPS
# 3x3 patterns with mean 0: P has four +1, four -1 and one 0 (biased variance 8/9); R has columns 1, 0, -1
# (variance 6/9). For any a > 0 and constant c: bn(a*P + c) = a*P / sqrt(a^2 * 8/9 + eps).
P = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, -1.0, -1.0]])
R = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
VAR_P, VAR_R = 8 / 9, 6 / 9


def bn_scale(a: float, var: float) -> float:
    """Factor k with bn(a * pattern) = k * pattern, for a zero-mean pattern of variance ``var``."""
    return a / math.sqrt(a * a * var + EPS)


def small_cfg(**overrides) -> ModelConfig:
    base = dict(backbone="vgg16", num_classes=3, width=0.125, output_stride=4, nonlocal_blocks=0,
                context_pool=True, update_rate=0.5)
    base.update(overrides)
    return ModelConfig(**base)


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- backbones


def test_scale_channels_rounds_and_keeps_at_least_one():
    assert scale_channels(64, 1.0) == 64
    assert scale_channels(64, 0.125) == 8
    assert scale_channels(48, 0.1) == 5  # 4.8 -> 5
    assert scale_channels(80, 0.03) == 2  # 2.4 -> 2
    assert scale_channels(32, 0.01) == 1  # 0.32 rounds to 0 -> min 1


def test_select_sites_keeps_the_last_ones_and_rejects_out_of_range():
    assert select_sites("vgg16", 4) == ("pool2", "pool3", "pool4", "conv5_3")
    assert select_sites("vgg16", 3) == ("pool3", "pool4", "conv5_3")
    assert select_sites("vgg16", 0) == ()
    assert select_sites("inceptionv3", 3) == ("maxpool2", "Mixed_5d", "Mixed_6e")
    for backbone, count in [("vgg16", 5), ("inceptionv3", 4), ("vgg16", -1)]:
        with pytest.raises(ConfigError, match="model.nonlocal_blocks"):
            select_sites(backbone, count)


@torch.no_grad()
@pytest.mark.parametrize("backbone,size,side,channels,blocks", [
    ("vgg16", 224, 14, 512, {"pool2": 128, "pool3": 256, "pool4": 512, "conv5_3": 512}),
    ("inceptionv3", 299, 17, 768, {"maxpool2": 192, "Mixed_5d": 288, "Mixed_6e": 768}),
])
def test_paper_network_at_width_one(backbone, size, side, channels, blocks):
    cfg = ModelConfig(backbone=backbone, num_classes=200, nonlocal_blocks=len(blocks))
    model = build_model(cfg, "paper", size).eval()
    out = model(torch.randn(1, 3, size, size))
    assert out.logits.shape == out.logits_e.shape == (1, 200)
    assert out.cams.shape == out.cams_e.shape == (1, 200, side, side)
    assert model.backbone.out_channels == channels
    assert model.context_pool.q.shape == (200, side, side)
    assert {k: b.channels for k, b in model.backbone.nonlocal_blocks.items()} == blocks


@torch.no_grad()
@pytest.mark.parametrize("stride,size,side", [(16, 64, 4), (8, 64, 8), (4, 64, 16), (4, 33, 8), (16, 50, 3)])
def test_vgg_feature_size_matches_forward(stride, size, side):
    backbone = VGG16Backbone(width=0.125, output_stride=stride, nonlocal_blocks=4)
    x = backbone(torch.randn(1, 3, size, size))
    assert backbone.feature_size(size) == side
    assert x.shape == (1, 64, side, side)  # 512 * 0.125 channels


@torch.no_grad()
# 1a (3x3 s2): (s-3)//2+1; 2a: -2; maxpool1: (s-3)//2+1; 4a: -2; maxpool2, Mixed_6a: (s-3)//2+1 each
# 43 -> 21, 19, 9, 7, 3, 1; 100 -> 49, 47, 23, 21, 10, 4; 139 -> 69, 67, 33, 31, 15, 7; 299 -> ... 35, 17
@pytest.mark.parametrize("size,side", [(43, 1), (100, 4), (139, 7), (299, 17)])
def test_inception_feature_size_matches_forward(size, side):
    backbone = InceptionV3Backbone(width=0.125, nonlocal_blocks=3).eval()
    x = backbone(torch.randn(1, 3, size, size))
    assert InceptionV3Backbone.feature_size(size) == side
    assert x.shape == (1, 96, side, side)  # 4 branches x round(192 * 0.125) = 4 x 24 channels


def test_inception_too_small_input_is_a_config_error():
    assert InceptionV3Backbone.feature_size(42) == 0  # 20, 18, 8, 6, 2, 0
    with pytest.raises(ConfigError, match="input size 42"):
        build_model(small_cfg(backbone="inceptionv3", output_stride=16), "paper", 42)


def test_vgg_width_scales_every_conv_and_block():
    backbone = VGG16Backbone(width=0.125, output_stride=16, nonlocal_blocks=4)
    convs = [m.out_channels for m in backbone.features if isinstance(m, nn.Conv2d)]
    assert convs == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]  # cfg "D" x 0.125, no pool5 convs lost
    assert {k: b.channels for k, b in backbone.nonlocal_blocks.items()} == {
        "pool2": 16, "pool3": 32, "pool4": 64, "conv5_3": 64}
    pools = [m for m in backbone.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and len(backbone.features) == 30  # torchvision's 31 layers minus pool5


def test_vgg_reduced_strides_replace_pools_by_identity_keeping_indices():
    s8 = VGG16Backbone(width=0.125, output_stride=8, nonlocal_blocks=0)
    s4 = VGG16Backbone(width=0.125, output_stride=4, nonlocal_blocks=0)
    assert isinstance(s8.features[23], nn.Identity) and isinstance(s8.features[16], nn.MaxPool2d)
    assert isinstance(s4.features[23], nn.Identity) and isinstance(s4.features[16], nn.Identity)
    assert isinstance(s4.features[9], nn.MaxPool2d)
    assert isinstance(s4.features[28], nn.Conv2d)  # conv5_3 at torchvision's index


def test_reference_vgg_uses_leaky_relu_and_paper_vgg_relu():
    ref = build_backbone("vgg16", 0.125, 16, 0, "reference")
    paper = build_backbone("vgg16", 0.125, 16, 0, "paper")
    leaky = [m for m in ref.features if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 13 and all(m.negative_slope == 0.2 for m in leaky)
    assert not any(isinstance(m, nn.ReLU) for m in ref.features)
    assert sum(isinstance(m, nn.ReLU) for m in paper.features) == 13
    assert not any(isinstance(m, nn.LeakyReLU) for m in paper.features)
    inception = build_backbone("inceptionv3", 0.125, 16, 0, "reference")
    assert not any(isinstance(m, nn.LeakyReLU) for m in inception.modules())  # only VGG changes


@pytest.mark.parametrize("cfg,match", [
    (dict(backbone="inceptionv3", output_stride=8), "inceptionv3 supports only 16"),
    (dict(output_stride=2), "model.output_stride = 2"),
    (dict(nonlocal_blocks=5), "model.nonlocal_blocks = 5"),
    (dict(backbone="inceptionv3", output_stride=16, nonlocal_blocks=4), "model.nonlocal_blocks = 4"),
    (dict(width=0.0), "model.width"),
    (dict(num_classes=0), "model.num_classes"),
])
def test_unsupported_configs_raise_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_model(small_cfg(**cfg), "paper", 96)


def test_unknown_variant_and_empty_feature_map_raise_config_error():
    with pytest.raises(ConfigError, match="variant = 'exact'"):
        build_model(small_cfg(), "exact", 32)
    with pytest.raises(ConfigError, match="input size 8"):
        build_model(small_cfg(output_stride=16), "paper", 8)  # 8 / 16 -> 0 cells


# --------------------------------------------------------------------------- non-local block


def test_nonlocal_inner_channels_floor_eighth_min_one():
    assert attention_inner_channels(512) == 64
    assert attention_inner_channels(20) == 2  # floor(2.5)
    assert attention_inner_channels(4) == 1


@pytest.mark.parametrize("train", [True, False])
def test_nonlocal_block_is_identity_at_init(train):
    block = NonLocalBlock(16).train(train)
    x = torch.randn(2, 16, 5, 4)
    assert torch.equal(block(x), x)
    nn.init.ones_(block.bn.weight)  # the test can fail: a live BN makes the residual branch non-zero
    assert not torch.allclose(block(x), x)


@torch.no_grad()
def test_nonlocal_block_attention_by_hand():
    # C = 1 (inner 1), two positions x = [1, 2]; all 1x1 convs are the identity, BN in eval with mean 0 var 1.
    block = NonLocalBlock(1).eval()
    for conv in (block.query_conv, block.key_conv, block.value_conv, block.mix_conv):
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    block.bn.weight.fill_(1.0)
    x = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    # energy_ij = x_i x_j = [[1, 2], [2, 4]]; row softmax: [1, e] / (1 + e), [e^2, e^4] / (e^2 + e^4)
    a0 = 1 / (1 + math.e)
    a1 = 1 / (1 + math.e ** 2)
    mixed = [a0 * 1 + (1 - a0) * 2, a1 * 1 + (1 - a1) * 2]  # sum_j a_ij v_j, v = x
    expected = [1 + mixed[0] / math.sqrt(1 + EPS), 2 + mixed[1] / math.sqrt(1 + EPS)]
    assert block(x).flatten().tolist() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- CAM module and Eq. 8


def test_cam_module_eq1_and_gap_of_cam_plus_bias_is_logit():
    classifier = nn.Linear(2, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        classifier.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])  # (1, C=2, 1, 2)
    logits, cams = cam_module(x, classifier)
    # M_0 = 1*X_0 + 2*X_1 = [5, 3]; M_1 = -X_1 = [-2, 0]; S = mean(M) + b = [4.5, -1]
    assert cams.flatten().tolist() == [5.0, 3.0, -2.0, 0.0]
    assert logits.flatten().tolist() == [4.5, -1.0]


def test_enhance_eq8_by_hand():
    conv = nn.Conv2d(2, 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, 3.0]).view(1, 2, 1, 1))
        conv.bias.fill_(1.0)
    x = torch.full((1, 1, 1, 2), 2.0)
    context = torch.tensor([[[1.0, -1.0]]])  # Q_pi, pi = 1
    # A = W[:, 1] * Q_1 + b = 3 * [1, -1] + 1 = [4, -2]; X^e = X + X * A = 2 + 2 * [4, -2] = [10, -2]
    x_e = enhance(x, context, torch.tensor([1]), conv)
    assert x_e.flatten().tolist() == [10.0, -2.0]


def test_enhance_equals_dense_conv_on_the_one_hot_context_map():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, kernel_size=1)
    x = torch.randn(3, 4, 2, 3)
    context = torch.randn(3, 2, 3)
    top1 = torch.tensor([4, 0, 4])
    dense = torch.zeros(3, 5, 2, 3)
    dense[torch.arange(3), top1] = context  # the reference's map: Q_pi in channel pi, zeros elsewhere
    expected = x + x * conv(dense)
    assert torch.allclose(enhance(x, context, top1, conv), expected, atol=1e-6)


# --------------------------------------------------------------------------- Eq. 7 by hand


def test_standardize_is_per_map_with_biased_variance():
    maps = torch.stack([2 * P + 5, torch.full((3, 3), 7.0)])
    out = standardize(maps)
    assert torch.allclose(out[0], P * bn_scale(2.0, VAR_P), atol=1e-6)  # offset removed, scale 2/sqrt(32/9+eps)
    assert torch.equal(out[1], torch.zeros(3, 3))  # a constant map has no context: 0 / sqrt(eps) = 0


def _step1_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # 3 samples, 2 classes. Sample 0: top1 0 = label (correct), M_0 = 2P + 5.
    # Sample 1: top1 0, label 1 (wrong), M_0 = -7P. Sample 2: top1 1 = label (correct), M_1 = 3R.
    cams = torch.zeros(3, 2, 3, 3)
    cams[0, 0] = 2 * P + 5
    cams[0, 1] = 100 * R  # not its top-1: never used
    cams[1, 0] = -7 * P
    cams[2, 1] = 3 * R
    return cams, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])


def test_pool_step_by_step_reference_rule():
    lam = 0.5
    pool = CausalContextPool(2, (3, 3), lam, POOL_RULES["reference"])
    cams, top1, labels = _step1_batch()
    assert pool.update(cams, top1, labels)
    # class 0: only sample 0 (correct): bn(2P + 5) = k P, k = 2 / sqrt(32/9 + eps); Q_0 = bn(0 + lam k P)
    q0 = bn_scale(lam * bn_scale(2.0, VAR_P), VAR_P)
    q1 = bn_scale(lam * bn_scale(3.0, VAR_R), VAR_R)
    assert torch.allclose(pool.q[0], q0 * P, atol=1e-6)
    assert torch.allclose(pool.q[1], q1 * R, atol=1e-6)
    # step 2: one correct sample of class 1 with M_1 = R; class 0 gets nothing but is re-standardised
    cams2 = torch.zeros(1, 2, 3, 3)
    cams2[0, 1] = R
    assert pool.update(cams2, torch.tensor([1]), torch.tensor([1]))
    c1 = q1 + lam * bn_scale(1.0, VAR_R)  # Q_1 + lam bn(R) = c1 R
    assert torch.allclose(pool.q[0], bn_scale(q0, VAR_P) * P, atol=1e-6)
    assert torch.allclose(pool.q[1], bn_scale(c1, VAR_R) * R, atol=1e-6)


def test_pool_step_by_step_paper_rule():
    lam = 0.5
    pool = CausalContextPool(2, (3, 3), lam, POOL_RULES["paper"])
    cams, top1, _ = _step1_batch()
    assert pool.update(cams, top1, labels=None)  # needs no labels
    # class 0: samples 0 and 1 both (wrong predictions count): (2P + 5) + (-7P) = -5P + 5 -> bn = -k P
    q0 = -bn_scale(lam * bn_scale(5.0, VAR_P), VAR_P)
    q1 = bn_scale(lam * bn_scale(3.0, VAR_R), VAR_R)
    assert q0 < 0  # the opposite sign of the reference's Q_0: the wrong sample dominates
    assert torch.allclose(pool.q[0], q0 * P, atol=1e-6)
    assert torch.allclose(pool.q[1], q1 * R, atol=1e-6)
    # step 2: only class 1 is written (Eq. 7 updates Q_pi); Q_0 stays exactly as it was
    before0 = pool.q[0].clone()
    cams2 = torch.zeros(1, 2, 3, 3)
    cams2[0, 1] = R
    pool.update(cams2, torch.tensor([1]))
    assert torch.equal(pool.q[0], before0)
    assert torch.allclose(pool.q[1], bn_scale(q1 + lam * bn_scale(1.0, VAR_R), VAR_R) * R, atol=1e-6)


def test_reference_pool_without_labels_or_without_correct_samples():
    pool = CausalContextPool(2, (3, 3), 0.5, POOL_RULES["reference"])
    cams, top1, labels = _step1_batch()
    assert not pool.update(cams, top1, labels=None)  # correct-only rule, no labels: no update
    assert torch.equal(pool.q, torch.zeros(2, 3, 3))
    assert pool.update(cams, top1, labels=torch.tensor([2, 2, 2]))  # nobody correct: Q = bn(Q) = bn(0) = 0
    assert torch.equal(pool.q, torch.zeros(2, 3, 3))


def test_pool_contributions_sum_same_class_samples():
    cams, top1, labels = _step1_batch()
    total, touched = pool_contributions(cams, top1, labels, correct_only=False)
    assert torch.equal(total[0], -5 * P + 5) and torch.equal(total[1], 3 * R)
    assert touched.tolist() == [True, True]
    total, touched = pool_contributions(cams, top1, torch.tensor([1, 1, 1]), correct_only=True)
    assert torch.equal(total[0], torch.zeros(3, 3)) and touched.tolist() == [False, True]


def test_updated_pool_does_not_modify_its_input():
    q = torch.zeros(2, 3, 3)
    total = torch.stack([P, torch.zeros(3, 3)])
    new = updated_pool(q, total, torch.tensor([True, False]), 0.1, restandardize_all=True)
    assert torch.equal(q, torch.zeros(2, 3, 3)) and not torch.equal(new, q)


def test_pool_lookup_resizes_bilinearly_and_update_resizes_contributions():
    pool = CausalContextPool(1, (1, 2), 0.1, POOL_RULES["paper"])
    pool.q.copy_(torch.tensor([[[0.0, 1.0]]]))
    # align_corners=False: output x -> source (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped to [0, 1])
    assert pool.lookup(torch.tensor([0]), (1, 4)).flatten().tolist() == [0.0, 0.25, 0.75, 1.0]
    cams = torch.tensor([[[[1.0, 1.0, 3.0, 3.0]]]])  # (1, 1, 1, 4) -> resized to (1, 2): [1, 3]
    pool.update(cams, torch.tensor([0]))
    assert pool.q.shape == (1, 1, 2)
    assert pool.q[0, 0, 0] < 0 < pool.q[0, 0, 1]


# --------------------------------------------------------------------------- the model


def test_base_model_has_equal_branches_and_no_pool():
    model = build_model(small_cfg(context_pool=False, nonlocal_blocks=2), "reference", 32)
    out = model(images(), labels=torch.tensor([0, 1]))
    assert torch.equal(out.logits, out.logits_e) and torch.equal(out.cams, out.cams_e)
    assert model.context_pool is None and model.context_conv is None
    assert not any("context" in k for k in model.state_dict())


def test_both_cam_modules_share_one_classifier():
    model = build_model(small_cfg(), "paper", 32)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    out = model(images())
    bias = model.classifier.bias
    assert torch.allclose(out.logits, out.cams.mean(dim=(2, 3)) + bias, atol=1e-5)
    assert torch.allclose(out.logits_e, out.cams_e.mean(dim=(2, 3)) + bias, atol=1e-5)


def _set_pool(model: CICAM, seed: int = 1) -> None:
    q = torch.randn(model.context_pool.q.shape, generator=torch.Generator().manual_seed(seed))
    model.context_pool.q.copy_(standardize(q))


def test_pool_frozen_in_eval_with_update_pool_false_and_updated_in_train():
    model = build_model(small_cfg(), "reference", 32)
    _set_pool(model)
    x, labels = images(), torch.tensor([0, 1])
    before = model.context_pool.q.clone()
    model.eval()
    model(x, labels)
    assert torch.equal(model.context_pool.q, before)  # eval: frozen
    model.train()
    model(x, labels, update_pool=False)
    assert torch.equal(model.context_pool.q, before)  # teachers' extra passes
    model(x)
    assert torch.equal(model.context_pool.q, before)  # reference rule without labels
    model(x, labels)
    assert not torch.equal(model.context_pool.q, before)  # train mode defaults to updating


@torch.no_grad()
@pytest.mark.parametrize("variant,uses_updated_q", [("paper", True), ("reference", False)])
def test_update_then_enhance_order(variant, uses_updated_q):
    # no BN anywhere (VGG, 0 non-local blocks), so train and eval forwards compute the same function
    model = build_model(small_cfg(), variant, 32)
    _set_pool(model)
    x = images()
    out0 = model.eval()(x, update_pool=False)
    labels = out0.logits.argmax(1)  # all predictions correct: both rules update
    q_before = model.context_pool.q.clone()
    out = model.train()(x, labels)
    q_after = model.context_pool.q.clone()
    total, touched = pool_contributions(out.cams, labels, labels, correct_only=False)
    rule = POOL_RULES[variant]
    expected = updated_pool(q_before, total, touched, 0.5, rule.restandardize_all)
    assert torch.allclose(q_after, expected, atol=1e-5)  # the pool absorbed this step's M
    model.context_pool.q.copy_(q_after if uses_updated_q else q_before)
    replay = model.eval()(x, update_pool=False)
    assert torch.allclose(out.logits_e, replay.logits_e, atol=1e-5)
    model.context_pool.q.copy_(q_before if uses_updated_q else q_after)
    other = model(x, update_pool=False)
    assert not torch.allclose(out.logits_e, other.logits_e, atol=1e-5)


def test_pool_is_a_buffer_saved_and_restored():
    model = build_model(small_cfg(), "paper", 32)
    model(images())  # one training step fills Q
    state = model.state_dict()
    assert "context_pool.q" in state and state["context_pool.q"].abs().sum() > 0
    assert "context_pool.q" not in dict(model.named_parameters())
    fresh = build_model(small_cfg(), "paper", 32)
    assert fresh.context_pool.q.abs().sum() == 0
    fresh.load_state_dict(state)
    assert torch.equal(fresh.context_pool.q, model.context_pool.q)


def test_backward_reaches_every_parameter_and_not_the_pool():
    model = build_model(small_cfg(output_stride=8, nonlocal_blocks=4), "reference", 32)
    _set_pool(model)  # a non-empty Q so the context conv's weights get a non-zero gradient
    labels = torch.tensor([0, 2])
    out = model(images(), labels)
    loss = F.cross_entropy(out.logits_e, labels) + F.cross_entropy(out.logits, labels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert model.context_conv.weight.grad.abs().sum() > 0
    assert model.backbone.nonlocal_blocks["pool2"].bn.weight.grad.abs().sum() > 0
    assert model.backbone.features[0].weight.grad.abs().sum() > 0
    assert not model.context_pool.q.requires_grad and model.context_pool.q.grad is None


@torch.no_grad()
def test_other_input_size_interpolates_the_pool():
    model = build_model(small_cfg(), "paper", 32).eval()  # pool 8x8 (stride 4)
    _set_pool(model)
    out = model(images(size=48))
    assert out.cams_e.shape == (2, 3, 12, 12)
    assert model.context_pool.q.shape == (3, 8, 8)


def test_inception_model_small_width_trains_one_step():
    model = build_model(small_cfg(backbone="inceptionv3", output_stride=16, nonlocal_blocks=3), "paper", 75)
    out = model(images(size=75), torch.tensor([0, 1]))
    assert out.cams.shape == (2, 3, 3, 3) and out.logits_e.shape == (2, 3)
    (out.logits_e.sum() + out.logits.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------- optimizer groups


def test_param_groups_paper_single_group():
    model = build_model(small_cfg(nonlocal_blocks=2), "paper", 32)
    groups = param_groups(model, 1e-3, 1.0)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_param_groups_reference_backbone_and_context_conv_at_a_tenth():
    model = build_model(small_cfg(nonlocal_blocks=2), "reference", 32)
    backbone, head = param_groups(model, 1e-3, 0.1)
    assert backbone["lr"] == pytest.approx(1e-4) and head["lr"] == 1e-3
    assert {id(p) for p in head["params"]} == {id(model.classifier.weight), id(model.classifier.bias)}
    body_ids = {id(p) for p in backbone["params"]}
    assert id(model.context_conv.weight) in body_ids
    assert id(model.backbone.nonlocal_blocks["conv5_3"].query_conv.weight) in body_ids
    assert body_ids | {id(p) for p in head["params"]} == {id(p) for p in model.parameters()}
    assert not body_ids & {id(p) for p in head["params"]}
    torch.optim.Adam([backbone, head], lr=1e-3)  # the extra key (name) is accepted


def test_param_groups_accepts_a_float_multiplier():
    model = build_model(small_cfg(), "paper", 32)
    assert len(param_groups(model, 1e-3, 1.0)) == 1
    backbone, head = param_groups(model, 1e-3, 0.25)
    assert backbone["lr"] == pytest.approx(2.5e-4) and head["lr"] == 1e-3
    with pytest.raises(ConfigError, match="must be > 0"):
        param_groups(model, 1e-3, 0.0)


def test_vgg16_batch_norm_matches_torchvision_vgg16_bn_keys_and_shapes():
    """model.batch_norm builds torchvision's vgg16_bn layout, so its ImageNet file maps onto ours."""
    import torchvision

    theirs = torchvision.models.vgg16_bn(weights=None).features.state_dict()
    model = build_model(ModelConfig(num_classes=3, batch_norm=True), "paper", 64)
    ours = {k[len("backbone."):]: v.shape for k, v in model.state_dict().items() if k.startswith("backbone.features.")}
    assert model.backbone.name == "vgg16_bn"
    assert {f"features.{k}": v.shape for k, v in theirs.items()} == ours
    plain = build_model(ModelConfig(num_classes=3), "paper", 64)
    assert plain.backbone.name == "vgg16"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.backbone.features)
