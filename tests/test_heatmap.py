"""Eq. 2-3 heatmap, its normalisation, upsampling and the foreground mask, on hand-made tensors."""

import pytest
import torch

from kdcicam.model.heatmap import (
    class_heatmap,
    combination_weights,
    combinational_heatmap,
    foreground_mask,
    normalize_heatmap,
    upsample_heatmap,
)


def _close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# ------------------------------------------------------------------ combination weights γ(k)

def test_reference_weights_are_minus_rank_squared():
    # γ(k) = -(k/(n-1))²: n=3 -> -(0/2)², -(1/2)², -(2/2)² = 0, -0.25, -1
    assert _close(combination_weights(3, "reference"), [0.0, -0.25, -1.0])
    # n=5: -(k/4)² = 0, -1/16, -1/4, -9/16, -1
    assert _close(combination_weights(5, "reference"), [0.0, -0.0625, -0.25, -0.5625, -1.0])


def test_paper_weights_are_nlccam_quadratic_split_at_half():
    # m = n//2; upper = linspace(1, 0, m)², lower = -linspace(0, -1, n-m)²
    # n=2: m=1 -> [1] + [-0] = [1, 0]  (the top-1 CAM alone)
    assert _close(combination_weights(2, "paper"), [1.0, 0.0])
    # n=3: m=1 -> [1] + -[0, 1]² = [1, 0, -1]
    assert _close(combination_weights(3, "paper"), [1.0, 0.0, -1.0])
    # n=6: m=3 -> [1, .5, 0]² = [1, .25, 0]; -[0, .5, 1]² = [0, -.25, -1]
    assert _close(combination_weights(6, "paper"), [1.0, 0.25, 0.0, 0.0, -0.25, -1.0])


def test_paper_weights_for_cub_match_nlccam_code():
    # n=200, thr=100 as NL-CCAM's test script: w[k] = (1 - k/99)² for k < 100, -((k-100)/99)² after.
    w = combination_weights(200, "paper")
    assert w.shape == (200,)
    assert _close(w[[0, 99, 100, 199]], [1.0, 0.0, 0.0, -1.0])
    assert _close(w[33], (66 / 99) ** 2)  # (2/3)² = 0.4444
    assert _close(w[166], -((66 / 99) ** 2))
    assert bool((w[:-1] >= w[1:]).all())  # non-increasing with rank


def test_weights_reject_single_class_and_unknown_variant():
    with pytest.raises(ValueError):
        combination_weights(1, "paper")
    with pytest.raises(ValueError):
        combination_weights(3, "papers")


# ------------------------------------------------------------------ Eq. 3

def _three_class_maps():
    m0 = torch.arange(9.0).view(3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    m1 = torch.ones(3, 3)
    m2 = torch.eye(3)
    return torch.stack([m0, m1, m2]).unsqueeze(0)  # (1, 3, 3, 3)


def test_combinational_heatmap_ranks_by_score():
    cams = _three_class_maps()
    logits = torch.tensor([[0.1, 2.0, -1.0]])  # ranking t = (1, 0, 2)
    # reference γ = [0, -0.25, -1]: H = 0·M1 - 0.25·M0 - 1·M2
    expected_ref = -0.25 * cams[0, 0] - cams[0, 2]
    assert _close(combinational_heatmap(cams, logits, "reference")[0], expected_ref)
    # paper γ = [1, 0, -1]: H = M1 + 0·M0 - M2 = 1 - I
    expected_paper = torch.ones(3, 3) - torch.eye(3)
    assert _close(combinational_heatmap(cams, logits, "paper")[0], expected_paper)


def test_combinational_heatmap_per_image_ranking_and_gradient():
    cams = torch.cat([_three_class_maps(), _three_class_maps()]).requires_grad_(True)  # (2, 3, 3, 3)
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 2.0, 1.0]])  # t = (1,0,2) and (0,1,2)
    h = combinational_heatmap(cams, logits, "paper")  # (2, 3, 3)
    assert h.shape == (2, 3, 3)
    # image 2, paper γ = [1, 0, -1]: H = M0 - M2
    assert _close(h[1], cams[1, 0].detach() - cams[1, 2].detach())
    h.sum().backward()
    # d(ΣH)/dM_c = γ(rank of c) at every cell: image 1 -> class 0 rank 1 (0), class 1 rank 0 (1), class 2 (-1)
    assert _close(cams.grad[0, :, 0, 0], [0.0, 1.0, -1.0])
    assert _close(cams.grad[1, :, 0, 0], [1.0, 0.0, -1.0])


def test_combinational_heatmap_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        combinational_heatmap(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2), "paper")


def test_class_heatmap_selects_the_given_class():
    cams = torch.cat([_three_class_maps(), _three_class_maps()])
    h = class_heatmap(cams, torch.tensor([0, 2]))
    assert _close(h[0], torch.arange(9.0).view(3, 3))
    assert _close(h[1], torch.eye(3))


# ------------------------------------------------------------------ normalisation

def test_normalize_paper_is_min_max():
    h = torch.arange(9.0).view(1, 3, 3) - 2.0  # values -2 ... 6, span 8
    out = normalize_heatmap(h, "paper")
    assert _close(out, (torch.arange(9.0).view(1, 3, 3)) / 8.0)  # (h + 2) / 8
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_normalize_reference_subtracts_min_only():
    h = torch.arange(9.0).view(1, 3, 3) - 2.0
    assert _close(normalize_heatmap(h, "reference"), torch.arange(9.0).view(1, 3, 3))  # h + 2, max 8


def test_normalize_is_per_image_and_constant_maps_become_zero():
    h = torch.stack([torch.full((3, 3), 5.0), torch.tensor([[1.0, 3.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])])
    for variant in ("paper", "reference"):
        out = normalize_heatmap(h, variant)
        assert _close(out[0], torch.zeros(3, 3))  # constant: (5-5)/1 = 0, and 5-5 = 0
        assert bool(torch.isfinite(out).all())
    # second image: min 1, max 3 -> the 3 maps to (3-1)/2 = 1 (paper) or 2 (reference)
    assert _close(normalize_heatmap(h, "paper")[1, 0, 1], 1.0)
    assert _close(normalize_heatmap(h, "reference")[1, 0, 1], 2.0)


def test_normalize_constant_map_has_finite_gradient():
    h = torch.full((1, 3, 3), 2.0, requires_grad=True)
    normalize_heatmap(h, "paper").sum().backward()
    assert bool(torch.isfinite(h.grad).all())


# ------------------------------------------------------------------ upsampling

def test_upsample_is_bilinear_without_aligned_corners():
    h = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # (1, 2, 2)
    # align_corners=False: output i samples source (i + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25,
    # clamped to [0, 1] -> 0, .25, .75, 1. Row 0: [0, .25, .75, 1]; row 1 (y=.25): .75·row0 + .25·[2, 2.25, 2.75, 3]
    expected = torch.tensor([[0.0, 0.25, 0.75, 1.0],
                             [0.5, 0.75, 1.25, 1.5],
                             [1.5, 1.75, 2.25, 2.5],
                             [2.0, 2.25, 2.75, 3.0]])
    out = upsample_heatmap(h, (4, 4))
    assert out.shape == (1, 4, 4)
    assert _close(out[0], expected)


def test_upsample_to_non_square_size():
    assert upsample_heatmap(torch.zeros(2, 3, 3), (6, 9)).shape == (2, 6, 9)


# ------------------------------------------------------------------ foreground mask

def test_foreground_mask_thresholds_at_fraction_of_max():
    h = torch.arange(9.0).view(1, 3, 3)  # max 8
    # θ = 0.5 -> H > 4: cells 5, 6, 7, 8
    assert torch.equal(foreground_mask(h, 0.5)[0], h[0] > 4)
    # θ = 0 -> H > 0: everything but the minimum cell
    assert int(foreground_mask(h, 0.0).sum()) == 8


def test_foreground_mask_is_per_image_and_carries_no_gradient():
    h = torch.stack([torch.arange(9.0).view(3, 3), 10 * torch.arange(9.0).view(3, 3)]).requires_grad_(True)
    mask = foreground_mask(h, 0.5)
    assert mask.dtype == torch.bool and not mask.requires_grad
    assert torch.equal(mask[0], mask[1])  # same shape scaled x10: same mask


def test_mask_does_not_depend_on_the_normalisation():
    # min-max and min-subtraction differ by a positive per-image factor, and bilinear upsampling is
    # linear: H > θ·max(H) selects the same cells (the variants' masks differ only through γ).
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 3, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1, 1)
    masks = [foreground_mask(upsample_heatmap(normalize_heatmap(h, v), (12, 12)), 0.3)
             for v in ("paper", "reference")]
    assert torch.equal(masks[0], masks[1])
    assert 0 < float(masks[0].float().mean()) < 1


# ------------------------------------------------------------------ sum_1 (the released ILSVRC scripts)

def test_sum1_weights_by_hand():
    from kdcicam.model.heatmap import sum1_weights

    # n = 5, m = 3: linspace(0, 2, 3) = [0, 1, 2] on ranks 2, 3, 4, divided by m; +1 on the top-1 map
    assert sum1_weights(5, mean_num=3).tolist() == pytest.approx([1.0, 0.0, 0.0, -1 / 3, -2 / 3])
    # n = m = 3: the top-1 map is also the first of the last m (weight 0 there): 1 - 0
    assert sum1_weights(3, mean_num=3).tolist() == pytest.approx([1.0, -1 / 3, -2 / 3])
    # n = 200, m = 20: only the top-1 and the last 20 ranks count; the last gets -2/20
    g = sum1_weights(200)
    assert g[0] == 1.0 and g[1:181].abs().sum() == 0 and g[-1].item() == pytest.approx(-0.1)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_sum1_heatmap_is_the_same_in_both_variants(variant):
    from kdcicam.model.heatmap import sum1_weights

    g = torch.Generator().manual_seed(0)
    cams, logits = torch.randn(2, 25, 3, 3, generator=g), torch.randn(2, 25, generator=g)
    heat = combinational_heatmap(cams, logits, variant, "sum_1")
    order = logits.argsort(dim=1, descending=True, stable=True)  # (2, 25)
    gamma = sum1_weights(25)
    expected = torch.stack([torch.einsum("k,khw->hw", gamma, cams[b, order[b]]) for b in range(2)])
    assert torch.allclose(heat, expected, atol=1e-6)
    with pytest.raises(ValueError, match="function must be one of"):
        combinational_heatmap(cams, logits, variant, "linear")
