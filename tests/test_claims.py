"""The claims ledger on constructed stores whose answers are known."""

from __future__ import annotations

import dataclasses

import pytest
from _stored import add_finished_run

from kdcicam.analysis.claims import ProtocolPair, evaluate_claims
from kdcicam.registry.ablations import load_registry
from kdcicam.store import open_store


def _run(store, run_id, table, cell, seed, metrics, correct=None, fingerprint="fp", lr=None):
    add_finished_run(store, run_id, table, cell, seed, metrics, correct, fingerprint=fingerprint,
                     train=None if lr is None else {"lr": lr, "epochs": 12})


def _ledger(store):
    runs = store.list_runs()
    return evaluate_claims(load_registry(), runs, store.final_metrics([r.id for r in runs]),
                           lambda rid, p, s: store.get_image_records(rid, p, s, "test"), n_resamples=500)


def _pick(results, claim, metric):
    return next(r for r in results if r.claim == claim and r.metric == metric)


@pytest.fixture()
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def test_three_seeds_clear_gain_holds_and_clear_loss_does_not(store):
    # +ConPool beats Base by 10 points of Top-1 Loc on every seed (differences 10, 11, 9: mean 10,
    # t interval 10 ± 4.30 * 1/sqrt(3) = [7.52, 12.48]); GT-known is 4 to 6 points worse on every seed.
    for seed, (base_loc, pool_loc, pool_gt) in enumerate([(0.40, 0.50, 0.55), (0.41, 0.52, 0.54), (0.42, 0.51, 0.56)]):
        _run(store, f"base{seed}000", "table3", "base", seed, {"top1_loc": base_loc, "gt_known_loc": 0.60})
        _run(store, f"pool{seed}000", "table3", "conpool", seed, {"top1_loc": pool_loc, "gt_known_loc": pool_gt})
    results = _ledger(store)
    loc = _pick(results, "conpool-improves-loc", "top1_loc")
    # the interval also lies above the paper's own Δ (+0.9): larger than the paper's
    assert loc.status == "holds, larger than the paper's" and loc.n_seeds == 3 and loc.interval == "seeds (t)"
    assert loc.ours_delta == pytest.approx(10.0) and loc.paper_delta == pytest.approx(0.9)
    assert loc.ci_lo == pytest.approx(10 - 4.302653 / 3 ** 0.5, abs=1e-3)
    assert dict(loc.seed_deltas) == pytest.approx({0: 10.0, 1: 11.0, 2: 9.0})  # each seed's own difference
    gt = _pick(results, "conpool-improves-loc", "gt_known_loc")
    assert gt.status == "does not hold, smaller than the paper's" and gt.ours_delta == pytest.approx(-5.0)
    # claims whose cells were never run say so
    assert _pick(results, "kd-improves-cls-and-loc", "top1_cls").status == "not run"


def test_noisy_seeds_are_inconclusive(store):
    # differences +5, -5, +1: the interval straddles zero
    for seed, (a, b) in enumerate([(0.40, 0.45), (0.45, 0.40), (0.40, 0.41)]):
        _run(store, f"base{seed}000", "table3", "base", seed, {"top1_loc": a})
        _run(store, f"pool{seed}000", "table3", "conpool", seed, {"top1_loc": b})
    assert _pick(_ledger(store), "conpool-improves-loc", "top1_loc").status == "inconclusive"


def test_one_seed_gives_no_verdict_however_clear_the_test_images(store):
    # 100 images: Base right on 20, +ConPool right on the same 20 and 40 more -> +40 points, clearly > 0 per
    # image; but one seed says nothing of the training's noise: no seed interval, no verdict
    base = [i < 20 for i in range(100)]
    pool = [i < 60 for i in range(100)]
    _run(store, "base0000", "table3", "base", 0, {"top1_loc": 0.20}, base)
    _run(store, "pool0000", "table3", "conpool", 0, {"top1_loc": 0.60}, pool)
    r = _pick(_ledger(store), "conpool-improves-loc", "top1_loc")
    assert (r.interval, r.status, r.ci_lo, r.p_value) == ("1 seed", "inconclusive (1 seed)", None, None)
    assert r.image_ci_lo > 25  # the per-image interval is still shown, as a description of the test set


def test_identical_seed_differences_give_no_interval_and_no_verdict(store):
    # +ConPool is exactly 10 points ahead on each of three seeds: a t interval of zero width would "hold"
    for seed in range(3):
        _run(store, f"base{seed}000", "table3", "base", seed, {"top1_loc": 0.40})
        _run(store, f"pool{seed}000", "table3", "conpool", seed, {"top1_loc": 0.50})
    r = _pick(_ledger(store), "conpool-improves-loc", "top1_loc")
    assert r.ours_delta == pytest.approx(10.0) and (r.ci_lo, r.ci_hi, r.p_value) == (None, None, None)
    assert r.status == "inconclusive" and r.interval.startswith("no spread")


def test_pareto_claim(store):
    # CI-CAM's two settings trade cls against loc; KD-CI-CAM's one setting beats both bests at once -> holds
    for lr, (cls, loc) in zip((0.001, 0.002), [(0.80, 0.30), (0.60, 0.50)]):
        _run(store, f"cicam{lr}0", "figure1b", "ci-cam", 0, {"top1_cls": cls, "top1_loc": loc}, lr=lr)
    _run(store, "kdcicam000", "figure1b", "kd-ci-cam", 0, {"top1_cls": 0.82, "top1_loc": 0.52}, lr=0.001)
    r = _pick(_ledger(store), "kd-escapes-cl-dilemma", "top1_cls & top1_loc")
    assert r.status == "inconclusive (1 seed)" and r.ours_delta == pytest.approx(2.0)
    assert (r.n_seeds, r.interval) == (1, "best-of-settings")
    # a second seed where KD-CI-CAM's run is beaten on localization. Setting means over the two seeds:
    # CI-CAM lr 0.001 (0.75, 0.375), lr 0.002 (0.60, 0.50); KD-CI-CAM (0.785, 0.46): 4 points short of
    # the best CI-CAM loc -> margin min(+3.5, -4.0) = -4.0; per seed it holds in 1 of 2; two seeds are too
    # few for a verdict on a scatter
    _run(store, "cicam9001", "figure1b", "ci-cam", 1, {"top1_cls": 0.70, "top1_loc": 0.45}, lr=0.001)
    _run(store, "cicam9002", "figure1b", "ci-cam", 1, {"top1_cls": 0.60, "top1_loc": 0.50}, lr=0.002)
    _run(store, "kdcicam1", "figure1b", "kd-ci-cam", 1, {"top1_cls": 0.75, "top1_loc": 0.40}, lr=0.001)
    r = _pick(_ledger(store), "kd-escapes-cl-dilemma", "top1_cls & top1_loc")
    assert r.ours_delta == pytest.approx(-4.0) and r.status == "inconclusive (2 seeds)"
    assert (r.n_seeds, r.interval) == (2, "best-of-settings (mean of 2 seeds); holds in 1 of 2 seeds")
    # a third seed with CI-CAM runs only (its KD-CI-CAM runs not trained yet) is left out of the comparison:
    # its CI-CAM run would otherwise move CI-CAM's best setting
    _run(store, "cicam902", "figure1b", "ci-cam", 2, {"top1_cls": 0.95, "top1_loc": 0.90}, lr=0.001)
    r = _pick(_ledger(store), "kd-escapes-cl-dilemma", "top1_cls & top1_loc")
    assert r.ours_delta == pytest.approx(-4.0) and r.n_seeds == 2


def test_per_image_interval_pools_the_seeds_per_image(store):
    # 100 images, 2 seeds, each: Base right on images 0-19, +ConPool on 0-59. Per-image difference
    # (mean over seeds): 1 on 40 images, 0 on 60 -> +40 points; per-image sd sqrt(0.4 - 0.16) = 0.49,
    # standard error 0.049 -> 95 % about [30.4, 49.6].
    base = [i < 20 for i in range(100)]
    pool = [i < 60 for i in range(100)]
    for seed in (0, 1):
        _run(store, f"base{seed}000", "table3", "base", seed, {"top1_loc": 0.20}, base)
        _run(store, f"pool{seed}000", "table3", "conpool", seed, {"top1_loc": 0.60}, pool)
    r = _pick(_ledger(store), "conpool-improves-loc", "top1_loc")
    assert r.interval == "no spread (identical per-seed differences)" and r.n_seeds == 2
    assert 28 < r.image_ci_lo < 33 and 47 < r.image_ci_hi < 52


def test_per_image_interval_cancels_an_image_won_on_one_seed_and_lost_on_another(store):
    # seed 0: +ConPool wins images 0-39 and loses none; seed 1: it loses images 0-39 and wins 40-79.
    # Per image (mean over seeds): +0.5 on 40-79, 0 on 0-39 (win then loss), 0 on 80-99 -> +20 points,
    # while per seed the gains are +40 and 0. Hand check of the pooling: the images 0-39 cancel.
    base0 = [False] * 100
    pool0 = [i < 40 for i in range(100)]
    base1 = [i < 40 for i in range(100)]
    pool1 = [40 <= i < 80 for i in range(100)]
    _run(store, "base0000", "table3", "base", 0, {"top1_loc": 0.0}, base0)
    _run(store, "pool0000", "table3", "conpool", 0, {"top1_loc": 0.4}, pool0)
    _run(store, "base1000", "table3", "base", 1, {"top1_loc": 0.4}, base1)
    _run(store, "pool1000", "table3", "conpool", 1, {"top1_loc": 0.4}, pool1)
    r = _pick(_ledger(store), "conpool-improves-loc", "top1_loc")
    assert r.ours_delta == pytest.approx(20.0)
    # per-image differences: 0.5 on 40 images, 0 on 60 -> mean 0.2, sd sqrt(0.1 - 0.04) = 0.245, standard
    # error 0.0245 -> 95 % about [15.2, 24.8] (a per-seed analysis would see +40 and 0)
    assert 13 < r.image_ci_lo < 17.5 and 22.5 < r.image_ci_hi < 27


def test_a_scope_without_runs_of_a_claims_table_has_no_rows(store):
    # a sweep's runs at another context correlation are another dataset (fingerprint): a scope of its own,
    # in which no Table 3 cell ran -> no ledger rows there, rather than a "not run" row per claim
    _run(store, "base0000", "table3", "base", 0, {"top1_loc": 0.2})
    _run(store, "pool0000", "table3", "conpool", 0, {"top1_loc": 0.3})
    _run(store, "swp00000", "context-sweep", "base", 0, {"top1_loc": 0.2}, fingerprint="other")
    scopes = {r.scope for r in _ledger(store)}
    assert len(scopes) == 1 and "data fp" in next(iter(scopes))


def test_both_protocols_side_by_side_with_the_share_kept(store, capsys):
    import json

    from kdcicam.analysis.claims import pair_protocols
    from kdcicam.cli import main

    # +ConPool - Base Top-1 Loc per seed: paper protocol +10, +11, +9; standard +4, +5, +6 (mean 5: kept 50 %)
    for seed, (paper_gap, standard_gap) in enumerate([(0.10, 0.04), (0.11, 0.05), (0.09, 0.06)]):
        for cell, gap in (("base", 0.0), ("conpool", 1.0)):
            rid = f"{cell[:4]}{seed}000"
            _run(store, rid, "table3", cell, seed, {"top1_loc": 0.40 + gap * paper_gap})
            store.set_final_metrics(rid, "standard", "last", "fixed", "test", {"top1_loc": 0.30 + gap * standard_gap})
    runs = store.list_runs()
    finals = store.final_metrics([r.id for r in runs])
    records = lambda rid, p, s: store.get_image_records(rid, p, s, "test")  # noqa: E731
    pairs = pair_protocols(*(evaluate_claims(load_registry(), runs, finals, records, protocol=p, n_resamples=200)
                             for p in ("paper", "standard")))
    loc = next(p for p in pairs if p.paper.claim == "conpool-improves-loc" and p.paper.metric == "top1_loc")
    assert (loc.paper.protocol, loc.standard.protocol) == ("paper", "standard")
    assert loc.paper.ours_delta == pytest.approx(10.0) and loc.standard.ours_delta == pytest.approx(5.0)
    assert loc.kept == pytest.approx(0.5) and loc.same_verdict is True
    # a paper-protocol change against the paper's sign is no gain: no share of it is kept
    assert ProtocolPair(dataclasses.replace(loc.paper, ours_delta=-10.0), loc.standard).kept is None
    # nor of a paper-protocol change whose seed interval includes zero, or that has none (one seed)
    assert ProtocolPair(dataclasses.replace(loc.paper, ci_lo=-1.0), loc.standard).kept is None
    assert ProtocolPair(dataclasses.replace(loc.paper, ci_lo=None, ci_hi=None), loc.standard).kept is None
    kd = next(p for p in pairs if p.paper.claim == "kd-improves-cls-and-loc")
    assert kd.kept is None and kd.same_verdict is None  # never ran
    url = store.url
    with pytest.raises(SystemExit) as exit_json:
        main(["claims", "--db", url, "--protocol", "both", "--json"])
    assert exit_json.value.code in (0, None)
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["paper"]["claim"] == "conpool-improves-loc" and r["paper"]["metric"] == "top1_loc")
    # both intervals lie above the paper's Δ (+0.9; standard protocol: t = 4.1 / (1 / sqrt 3), p = 0.019, Holm over
    # the two protocols 0.038)
    assert row["kept"] == pytest.approx(0.5) and row["standard"]["status"] == "holds, larger than the paper's"
    assert row["standard"]["seed_deltas"] == pytest.approx({"0": 4.0, "1": 5.0, "2": 6.0})
    with pytest.raises(SystemExit):
        main(["claims", "--db", url, "--protocol", "both", "--md"])
    md = capsys.readouterr().out
    assert ("| top1_loc | +0.9 | +10.0 [+7.5, +12.5] holds, larger than the paper's | +5.0 [+2.5, +7.5] holds, "
            "larger than the paper's | 50 % | yes |") in md
    with pytest.raises(SystemExit) as bad:
        main(["claims", "--db", url, "--protocol", "both", "--variants"])
    assert bad.value.code == 2 and "with --variants name one protocol" in capsys.readouterr().err


def test_dilemma_claim_holds_when_no_setting_is_best_at_both(store):
    # seed 0: CI-CAM settings (cls, loc) = (0.80, 0.30), (0.60, 0.50): the best-cls setting is 20 points short
    # of the best loc, the best-loc one 20 short of the best cls -> margin +20, holds.
    for lr, (cls, loc) in zip((0.001, 0.002), [(0.80, 0.30), (0.60, 0.50)]):
        _run(store, f"cicam{lr}0", "figure1b", "ci-cam", 0, {"top1_cls": cls, "top1_loc": loc}, lr=lr)
    r = _pick(_ledger(store), "ci-cam-cl-dilemma", "top1_cls & top1_loc")
    assert (r.status, r.ours_delta, r.n_seeds, r.interval, r.paper_delta) == ("inconclusive (1 seed)",
                                                                              pytest.approx(20.0), 1,
                                                                              "best-of-settings", None)
    # seed 1: lr 0.001 (0.70, 0.45), lr 0.002 (0.65, 0.40): one setting is best at both (margin 0 in that seed).
    # Means: lr 0.001 (0.75, 0.375), lr 0.002 (0.625, 0.45): the best-cls setting is 7.5 points short in loc,
    # the best-loc one 12.5 short in cls -> +7.5, holds in 1 of 2 seeds
    for lr, (cls, loc) in zip((0.001, 0.002), [(0.70, 0.45), (0.65, 0.40)]):
        _run(store, f"cicam{lr}1", "figure1b", "ci-cam", 1, {"top1_cls": cls, "top1_loc": loc}, lr=lr)
    r = _pick(_ledger(store), "ci-cam-cl-dilemma", "top1_cls & top1_loc")
    assert r.status == "inconclusive (2 seeds)" and r.ours_delta == pytest.approx(7.5)
    assert r.interval == "best-of-settings (mean of 2 seeds); holds in 1 of 2 seeds" and r.n_seeds == 2
    # no GT-known numbers were stored: that claim did not run
    assert _pick(_ledger(store), "ci-cam-cl-dilemma-gt-known", "top1_cls & gt_known_loc").status == "not run"


def test_dilemma_is_judged_on_setting_means_not_on_pooled_seeds(store):
    # one setting is better at both on average (lr 0.001: cls 0.69, loc 0.50 vs lr 0.002: 0.61, 0.40), but the
    # seeds scatter the runs: pooled as six points, seed 0's lr-0.002 run (cls 0.78, loc 0.35) would be the best
    # cls and seed 2's lr-0.001 run (0.72, 0.60) the best loc, 6 points short in cls -> a spurious dilemma
    # (+6). On the setting means lr 0.001 is the best at both, ahead by min(8, 10) = 8 points: margin -8.
    runs = {0.001: [(0.70, 0.45), (0.65, 0.45), (0.72, 0.60)], 0.002: [(0.78, 0.35), (0.50, 0.40), (0.55, 0.45)]}
    for lr, points in runs.items():
        for seed, (cls, loc) in enumerate(points):
            _run(store, f"cicam{lr}{seed}", "figure1b", "ci-cam", seed, {"top1_cls": cls, "top1_loc": loc}, lr=lr)
    r = _pick(_ledger(store), "ci-cam-cl-dilemma", "top1_cls & top1_loc")
    assert r.ours_delta == pytest.approx(-8.0)
    # per seed: seed 0 has lr 0.002 best at cls (0.78) and lr 0.001 at loc (0.45 vs 0.35) -> a dilemma there;
    # in seeds 1 and 2 lr 0.001 is the best at both. The seeds disagree: no verdict
    assert r.status == "inconclusive"
    assert r.interval == "best-of-settings (mean of 3 seeds); holds in 1 of 3 seeds; bootstrap over seeds"


def test_a_seed_still_training_is_left_out_of_the_setting_means(store):
    # seed 0 ran both settings (a dilemma, +20); seed 1 has finished only lr 0.001, whose run is the best at both:
    # averaged in, it would move that setting's mean. Only seed 0 counts until seed 1 is complete.
    for lr, (cls, loc) in zip((0.001, 0.002), [(0.80, 0.30), (0.60, 0.50)]):
        _run(store, f"cicam{lr}0", "figure1b", "ci-cam", 0, {"top1_cls": cls, "top1_loc": loc}, lr=lr)
    _run(store, "cicam0.0011", "figure1b", "ci-cam", 1, {"top1_cls": 0.90, "top1_loc": 0.90}, lr=0.001)
    r = _pick(_ledger(store), "ci-cam-cl-dilemma", "top1_cls & top1_loc")
    assert (r.status, r.ours_delta, r.n_seeds, r.interval) == ("inconclusive (1 seed)", pytest.approx(20.0), 1,
                                                                "best-of-settings")


def _firsts(k, n=200):
    return [i < k for i in range(n)]


def test_a_dilemma_margin_gets_a_per_image_interval_and_its_status_rests_on_it(store):
    # 200 test images. Setting lr 0.001: cls right on the first 160 (80 %), loc on the first 60 (30 %);
    # lr 0.002: cls 120 (60 %), loc 100 (50 %). Margin +20; every resample keeps the order -> holds.
    for lr, cls, loc in ((0.001, 160, 60), (0.002, 120, 100)):
        _run(store, f"big{lr}", "figure1b", "ci-cam", 0, {"top1_cls": cls / 200, "top1_loc": loc / 200},
             {"correct_top1_cls": _firsts(cls), "correct_top1_loc": _firsts(loc)}, lr=lr)
    r = _pick(_ledger(store), "ci-cam-cl-dilemma", "top1_cls & top1_loc")
    assert r.ours_delta == pytest.approx(20.0) and r.status == "inconclusive (1 seed)" and r.image_ci_lo > 10


def test_a_one_point_dilemma_is_within_test_sample_noise(store):
    # lr 0.001: cls 122 of 200, loc 98; lr 0.002: cls 120, loc 100: margin +1 point, carried by two images on
    # each axis (images 120-121 for cls, 98-99 for loc). A resample without either pair has a tie, where one
    # setting is the best at both (margin 0): about e^-2 = 14 % of resamples, so the interval starts at 0.
    for lr, cls, loc in ((0.001, 122, 98), (0.002, 120, 100)):
        _run(store, f"small{lr}", "figure1b", "ci-cam", 0, {"top1_cls": cls / 200, "top1_loc": loc / 200},
             {"correct_top1_cls": _firsts(cls), "correct_top1_loc": _firsts(loc)}, lr=lr)
    r = _pick(_ledger(store), "ci-cam-cl-dilemma", "top1_cls & top1_loc")
    assert r.ours_delta == pytest.approx(1.0) and r.image_ci_lo == 0.0 and r.image_ci_hi > 0
    assert r.status == "inconclusive (1 seed)"


def test_a_pareto_margin_interval_resamples_the_same_images_for_every_run(store):
    # KD-CI-CAM's one setting is right wherever CI-CAM's best settings are, and on 10 images more on each axis:
    # the margin (+5 points) holds in every resample (the runs are paired by image).
    for lr, cls, loc in ((0.001, 160, 60), (0.002, 120, 100)):
        _run(store, f"ci{lr}", "figure1b", "ci-cam", 0, {"top1_cls": cls / 200, "top1_loc": loc / 200},
             {"correct_top1_cls": _firsts(cls), "correct_top1_loc": _firsts(loc)}, lr=lr)
    _run(store, "kd0.001", "figure1b", "kd-ci-cam", 0, {"top1_cls": 170 / 200, "top1_loc": 110 / 200},
         {"correct_top1_cls": _firsts(170), "correct_top1_loc": _firsts(110)}, lr=0.001)
    r = _pick(_ledger(store), "kd-escapes-cl-dilemma", "top1_cls & top1_loc")
    assert r.ours_delta == pytest.approx(5.0) and r.status == "inconclusive (1 seed)" and r.image_ci_lo > 0


def test_margins_by_hand():
    from types import SimpleNamespace as NS

    import numpy as np

    from kdcicam.analysis.best_of_settings import margin

    def _margin(claim, x, y):
        return margin(claim.kind, claim.cell, claim.versus, x, y)

    dilemma = NS(kind="dilemma", cell="c", versus="", metrics=["x", "y"])
    # settings (x, y): (80, 30), (60, 50) -> +20; a tie on x where one of the tied settings is also best on y:
    # (70, 40), (70, 45), (60, 44) -> 0 (setting 2 leads by min(0, 1) = 0); one setting best at both by
    # min(5, 2) = 2 points: (75, 47), (70, 45), (60, 44) -> -2; a near-best third setting (79, 49) beside
    # (80, 30), (60, 50): 1 point short on each axis -> +1
    x = {"c": np.array([[80.0, 60.0]])}
    y = {"c": np.array([[30.0, 50.0]])}
    assert _margin(dilemma, x, y).tolist() == [20.0]
    tied = _margin(dilemma, {"c": np.array([[70.0, 70.0, 60.0]])}, {"c": np.array([[40.0, 45.0, 44.0]])})
    assert tied.tolist() == [0.0]
    ahead = _margin(dilemma, {"c": np.array([[75.0, 70.0, 60.0]])}, {"c": np.array([[47.0, 45.0, 44.0]])})
    assert ahead.tolist() == [-2.0]
    near = _margin(dilemma, {"c": np.array([[80.0, 60.0, 79.0]])}, {"c": np.array([[30.0, 50.0, 49.0]])})
    assert near.tolist() == [1.0]
    assert _margin(dilemma, {"c": np.array([[70.0]])}, {"c": np.array([[40.0]])}) is None  # one setting
    pareto = NS(kind="pareto", cell="k", versus="c", metrics=["x", "y"])
    # k's settings (82, 52), (90, 40) against c's best x 80 and best y 50: min(2, 2) = 2, min(10, -10) = -10 -> 2
    got = _margin(pareto, {"k": np.array([[82.0, 90.0]]), "c": np.array([[80.0, 60.0]])},
                  {"k": np.array([[52.0, 40.0]]), "c": np.array([[30.0, 50.0]])})
    assert got.tolist() == [2.0]


def test_the_ledger_prints_one_table_per_scope(store, capsys):
    from kdcicam.cli import main

    for fp in ("fpA", "fpB"):  # two datasets: two scopes
        _run(store, f"base{fp}", "table3", "base", 0, {"top1_loc": 0.40}, fingerprint=fp)
        _run(store, f"pool{fp}", "table3", "conpool", 0, {"top1_loc": 0.45}, fingerprint=fp)
    with pytest.raises(SystemExit) as done:
        main(["claims", "--db", store.url])
    out = capsys.readouterr().out
    assert done.value.code in (0, None)
    assert out.count("claims ledger: ") == 2 and "(data fpA)" in out and "(data fpB)" in out
    assert "rows: " in out.splitlines()[-1]


def test_tally_counts_each_status():
    from types import SimpleNamespace as NS

    from kdcicam.cli.claims import tally

    rows = [NS(status=s) for s in ("holds", "holds", "inconclusive", "not run", "does not hold")]
    assert tally(rows) == "5 rows: 2 holds, 1 does not hold, 1 inconclusive, 1 not run"
    rows = [NS(status=s) for s in ("holds, smaller than the paper's", "inconclusive, smaller than the paper's",
                                   "inconclusive (1 seed)", "no data", "holds, larger than the paper's")]
    assert tally(rows) == ("5 rows: 2 holds, 2 inconclusive, 1 no data, 2 smaller than the paper's, "
                           "1 larger than the paper's")


def test_holm_within_a_claims_metrics_and_protocols(store, capsys):
    from kdcicam.analysis.ledger import evaluate_ledger
    from kdcicam.cli import main

    # +ConPool - Base Top-1 Loc per seed +4, +6, +8: t = 6 / (2 / sqrt 3) = 5.20, p = 0.035 < 5 %: holds alone.
    # GT-known +1, -2, +1.5: no effect. The claim's family is its two metrics (the standard protocol has no
    # numbers): Holm doubles the smaller p to 0.070 -> inconclusive, the uncorrected p shown beside it. Against the
    # paper's Δ (+0.9): t = 5.1 / (2 / sqrt 3) = 4.42, p = 0.048 alone ("larger than the paper's"), 0.095 after Holm.
    for seed, (loc, gt) in enumerate([(0.44, 0.61), (0.46, 0.58), (0.48, 0.615)]):
        _run(store, f"base{seed}000", "table3", "base", seed, {"top1_loc": 0.40, "gt_known_loc": 0.60})
        _run(store, f"pool{seed}000", "table3", "conpool", seed, {"top1_loc": loc, "gt_known_loc": gt})
    raw = _pick(_ledger(store), "conpool-improves-loc", "top1_loc")
    assert raw.status == "holds, larger than the paper's" and raw.p_value == pytest.approx(0.0351, abs=5e-4)
    assert raw.p_paper == pytest.approx(0.0476, abs=5e-4) and raw.size == "larger than the paper's"
    runs = store.list_runs()
    ledgers = evaluate_ledger(load_registry(), runs, store.final_metrics([r.id for r in runs]),
                              lambda rid, p, s: store.get_image_records(rid, p, s, "test"), n_resamples=200)
    assert set(ledgers) == {"paper", "standard"} and ledgers["standard"] == []
    loc = _pick(ledgers["paper"], "conpool-improves-loc", "top1_loc")
    assert (loc.status, loc.family_size) == ("inconclusive", 2)
    assert loc.p_holm == pytest.approx(2 * raw.p_value, abs=1e-4) and loc.p_value == raw.p_value
    assert loc.p_paper_holm == pytest.approx(2 * raw.p_paper, abs=1e-4) and loc.size is None
    with pytest.raises(SystemExit):
        main(["claims", "--db", store.url, "--md"])
    md = capsys.readouterr().out
    assert "Holm-adjusted within each claim's family" in md
    assert f"| {loc.p_value:.3g} ({loc.p_holm:.3g}, 2) | inconclusive |" in md


def test_a_gain_short_of_the_papers_is_said_to_be_smaller_after_holm(store):
    from kdcicam.analysis.ledger import evaluate_ledger

    # KD over the student, per seed: Top-1 Loc +2, +2.5, +3 (paper Δ +6.5), GT-known -0.5, 0, +0.5 (paper Δ +3.5).
    # Against zero: Top-1 Loc t = 8.66, p = 0.013 (Holm over the two metrics 0.026): holds; GT-known p = 1.
    # Against the paper's Δ: Top-1 Loc t = -13.9, p = 0.0052; GT-known t = -12.1, p = 0.0067; Holm 0.010 and
    # 0.010: both smaller than the paper's, GT-known without an established sign.
    for seed, (loc, gt) in enumerate([(0.42, 0.595), (0.425, 0.60), (0.43, 0.605)]):
        _run(store, f"stud{seed}000", "table3", "conpool", seed, {"top1_loc": 0.40, "gt_known_loc": 0.60})
        _run(store, f"kdkd{seed}000", "table3", "conpool+kd", seed, {"top1_loc": loc, "gt_known_loc": gt})
    runs = store.list_runs()
    ledger = evaluate_ledger(load_registry(), runs, store.final_metrics([r.id for r in runs]),
                             lambda rid, p, s: store.get_image_records(rid, p, s, "test"), n_resamples=200)["paper"]
    loc = _pick(ledger, "kd-improves-cls-and-loc", "top1_loc")
    gt = _pick(ledger, "kd-improves-cls-and-loc", "gt_known_loc")
    assert loc.status == "holds, smaller than the paper's" and loc.p_paper_holm == pytest.approx(0.0104, abs=5e-4)
    assert gt.status == "inconclusive, smaller than the paper's" and gt.size == "smaller than the paper's"
    assert _pick(ledger, "kd-improves-cls-and-loc", "top1_cls").status == "no data"  # ran, Top-1 Cls not stored


def _scatter_run(store, run_id, cell, seed, lr, cls, loc):
    _run(store, run_id, "figure1b", cell, seed, {"top1_cls": cls, "top1_loc": loc}, lr=lr)


def test_a_pareto_claim_over_three_seeds_is_judged_by_the_seed_bootstrap_and_every_seed(store):
    # CI-CAM trades cls (80 %) against loc (50 %) over its two settings; KD-CI-CAM's one setting is ~6 points
    # ahead of both bests on both axes in every seed (seed noise ±1): holds, the interval over the seeds
    for seed, jitter in enumerate((0.0, 0.01, -0.01)):
        _scatter_run(store, f"ci1{seed}", "ci-cam", seed, 0.001, 0.80 + jitter, 0.30)
        _scatter_run(store, f"ci2{seed}", "ci-cam", seed, 0.002, 0.60, 0.50 - jitter)
        _scatter_run(store, f"kd1{seed}", "kd-ci-cam", seed, 0.001, 0.86 - jitter, 0.56 + jitter)
    r = _pick(_ledger(store), "kd-escapes-cl-dilemma", "top1_cls & top1_loc")
    assert r.ours_delta == pytest.approx(6.0) and r.n_seeds == 3 and r.per_seed is not None
    assert r.interval == "best-of-settings (mean of 3 seeds); holds in 3 of 3 seeds; bootstrap over seeds"
    assert r.status == "holds" and r.ci_lo > 0 and r.p_value < 0.05
    # a seed in which KD-CI-CAM trails CI-CAM's loc: it no longer holds in every seed -> no verdict
    _scatter_run(store, "ci13", "ci-cam", 3, 0.001, 0.80, 0.30)
    _scatter_run(store, "ci23", "ci-cam", 3, 0.002, 0.60, 0.58)
    _scatter_run(store, "kd13", "kd-ci-cam", 3, 0.001, 0.86, 0.55)
    r = _pick(_ledger(store), "kd-escapes-cl-dilemma", "top1_cls & top1_loc")
    assert r.status == "inconclusive" and "holds in 3 of 4 seeds" in r.interval


def test_no_seed_with_every_setting_gives_no_scatter_estimate(store):
    # seed 0 ran only lr 0.001, seed 1 only lr 0.002: mixing them would compare settings on different seeds
    _scatter_run(store, "ci10", "ci-cam", 0, 0.001, 0.80, 0.30)
    _scatter_run(store, "ci21", "ci-cam", 1, 0.002, 0.60, 0.50)
    r = _pick(_ledger(store), "ci-cam-cl-dilemma", "top1_cls & top1_loc")
    assert (r.ours_delta, r.status) == (None, "inconclusive (no seed ran every setting)")


def test_a_scatter_claims_direction_is_applied():
    from kdcicam.analysis.best_of_settings import status_from

    # a claim that the margin is below zero ("decrease") holds where the margin and every seed's are negative
    assert status_from("decrease", -5.0, 0.001, [-4.0, -5.0, -6.0]) == "holds"
    assert status_from("increase", -5.0, 0.001, [-4.0, -5.0, -6.0]) == "does not hold"
    assert status_from("increase", 5.0, 0.001, [4.0, -1.0, 6.0]) == "inconclusive"  # a seed disagrees


MECHANISM_CLAIMS = {"conpool-lowers-context-and-background-mass", "conpool-lowers-context-reliance",
                    "conpool-raises-pxap", "kd-raises-body-mass", "kd-raises-pxap"}


def test_mechanism_claims_are_marked_as_our_reading_and_direction_only():
    reg = load_registry()
    claims = {c.key: c for c in reg.tables["table3"].claims}
    assert MECHANISM_CLAIMS <= set(claims)
    for key in MECHANISM_CLAIMS:
        c = claims[key]
        assert "our reading of §" in c.text and c.quote.startswith("§")
        # no cell prints a number for these metrics: no paper Δ
        assert not any(m in numbers for cell in reg.tables["table3"].cells for numbers in cell.paper.values()
                       for m in c.metrics)


def test_mechanism_claims_without_their_metrics_say_no_data(store, capsys):
    import json

    from kdcicam.cli import main

    # the cells ran and stored the accuracies only (a store from before the mechanism metrics)
    for seed in range(2):
        for cell in ("base", "conpool", "conpool+kd"):
            _run(store, f"{cell[:4]}{cell[-2:]}{seed}", "table3", cell, seed, {"top1_loc": 0.4 + 0.01 * seed})
    rows = [r for r in _ledger(store) if r.claim in MECHANISM_CLAIMS]
    assert len(rows) == 6 and {r.status for r in rows} == {"no data"}
    assert all(r.ours_delta is None and r.p_value is None for r in rows)
    with pytest.raises(SystemExit) as done:
        main(["claims", "--db", store.url, "--json"])
    assert done.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert {r["status"] for r in out if r["claim"] in MECHANISM_CLAIMS} == {"no data"}
    # every row carries the seeds a t test needs for the paper's Δ (a seed rule reads it): here 2 seeds, sd 0
    assert all("seeds_needed" in r for r in out)
    with pytest.raises(SystemExit):
        main(["claims", "--db", store.url])
    # the six mechanism rows and the three accuracy rows whose metric was not stored (Top-1 Cls, GT-known Loc)
    assert "11 rows: 2 inconclusive, 9 no data" in capsys.readouterr().out


def test_mechanism_claims_on_stored_values(store):
    from kdcicam.analysis.ledger import evaluate_ledger

    # per seed, +ConPool minus Base: context mass -5, -7, -6 points, background mass -1, +1, 0 points; PxAP +2,
    # +3, +4; KD minus +ConPool body mass +4, +6, +5. Context: t = -6 / (1 / sqrt 3) = -10.4, p = 0.009, Holm over
    # the claim's two metrics 0.018: holds (a decrease claimed); background: p = 1
    base = {"cam_mass_context": 0.30, "cam_mass_background": 0.20, "pxap": 0.50, "cam_mass_body": 0.20}
    for seed, (ctx, bg, pxap, body) in enumerate([(-0.05, -0.01, 0.02, 0.04), (-0.07, 0.01, 0.03, 0.06),
                                                  (-0.06, 0.0, 0.04, 0.05)]):
        pool = {**base, "cam_mass_context": 0.30 + ctx, "cam_mass_background": 0.20 + bg, "pxap": 0.50 + pxap}
        _run(store, f"base{seed}000", "table3", "base", seed, base)
        _run(store, f"pool{seed}000", "table3", "conpool", seed, pool)
        _run(store, f"kdkd{seed}000", "table3", "conpool+kd", seed, {**pool, "cam_mass_body": 0.20 + body})
    runs = store.list_runs()
    ledger = evaluate_ledger(load_registry(), runs, store.final_metrics([r.id for r in runs]),
                             lambda rid, p, s: store.get_image_records(rid, p, s, "test"), n_resamples=200)["paper"]
    context = _pick(ledger, "conpool-lowers-context-and-background-mass", "cam_mass_context")
    assert context.ours_delta == pytest.approx(-6.0) and context.direction == "decrease"
    assert context.status == "holds" and context.family_size == 2 and context.paper_delta is None
    assert context.size is None and context.seeds_needed is None  # direction only: no paper Δ to compare
    assert _pick(ledger, "conpool-lowers-context-and-background-mass", "cam_mass_background").status == "inconclusive"
    assert _pick(ledger, "conpool-raises-pxap", "pxap").status == "holds"
    assert _pick(ledger, "kd-raises-body-mass", "cam_mass_body").status == "holds"
    # KD's PxAP equals the student's on every seed: no spread, no verdict; context reliance was not stored
    assert _pick(ledger, "kd-raises-pxap", "pxap").status == "inconclusive"
    assert _pick(ledger, "conpool-lowers-context-reliance", "context_reliance").status == "no data"


def test_a_mechanism_metric_is_only_for_difference_claims(tmp_path):
    import shutil

    from kdcicam.core.errors import ConfigError
    from kdcicam.registry.ablations import DEFAULT_REGISTRY

    root = tmp_path / "ablations"
    shutil.copytree(DEFAULT_REGISTRY, root)
    text = (root / "figure1b.toml").read_text()
    (root / "figure1b.toml").write_text(text.replace('"top1_loc"]', '"pxap"]', 1))
    with pytest.raises(ConfigError, match="figure1b.toml: claim .*: metrics: unknown metric 'pxap'"):
        load_registry(root)
    (root / "figure1b.toml").write_text(text)
    (root / "table3.toml").write_text((root / "table3.toml").read_text().replace('"pxap"', '"pxap_typo"', 1))
    with pytest.raises(ConfigError, match="table3.toml: claim 'conpool-raises-pxap': metrics: unknown metric"):
        load_registry(root)
