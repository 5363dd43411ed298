"""Selection audit (issue 12): threshold policies, checkpoint selection on val vs test, the test
decisions a run made, the report's selection audit and best-of-N, and compare's verdict gate.

Every expected number is worked by hand in a comment next to it.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from _runs import one_thread, smoke_cache, smoke_config, smoke_index, with_classes  # noqa: F401
from alembic import command
from test_evaluate import RANKED, Bench, C, block, heat_is

from kdcicam.analysis.compare import compare_runs, format_comparison
from kdcicam.core.config import DEFAULT_THETA_GRID, EvalConfig, RunConfig
from kdcicam.core.identity import config_hash
from kdcicam.evaluation.boxes import box_from_heatmap
from kdcicam.evaluation.eval_result import EvalResult, ThresholdSweep
from kdcicam.evaluation.evaluator import evaluate
from kdcicam.evaluation.selection import (
    candidate_resizes,
    candidate_thetas,
    choose_theta,
    epoch_audit,
    resize_policies,
    threshold_policies,
)
from kdcicam.evaluation.theta_sweep import at_theta, boxes_at_thresholds, sweep_metrics
from kdcicam.registry.ablations import load_registry
from kdcicam.report import build_report, render
from kdcicam.store import _open as store_open
from kdcicam.store import open_store
from kdcicam.training.checkpoint import load_checkpoint

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- box sweep

def _maps() -> list[np.ndarray]:
    """Small maps: smooth (float32 and float64), quantised to eighths (many exact ties), constant, zero."""
    maps = []
    for k in range(12):
        g = torch.Generator().manual_seed(k)
        low = torch.rand(1, 1, 3 + k % 4, 4 + k % 3, generator=g)
        h = torch.nn.functional.interpolate(low, (9 + k, 12 + k % 5), mode="bilinear")[0, 0].numpy()
        h = (h - h.min()) / (h.max() - h.min())
        maps.append(np.round(h * 8) / 8 if k % 3 == 0 else h)
        maps.append(h.astype(np.float64))
    return maps + [np.full((5, 6), 0.5, np.float32), np.zeros((4, 4), np.float32)]


@pytest.mark.parametrize("policy", ["standard", "reference"])
def test_boxes_at_every_threshold_equal_one_box_at_a_time(policy):
    grid = [*DEFAULT_THETA_GRID, 0.14, 0.125, 0.5]  # 0.125, 0.5: on the quantised maps' levels exactly
    for h in _maps():
        want = np.array([box_from_heatmap(h, t, policy) for t in grid])  # (T, 4)
        assert np.array_equal(boxes_at_thresholds(h, grid, policy), want)


def test_reference_rule_with_a_negative_kept_mean_falls_back_per_threshold():
    # For θ in [0, 1] the kept map's mean is never negative; past 1 it can be. Map: -0.2 everywhere,
    # -0.1 at (row 1, col 2) (the max). θ = 2: θ·max = -0.2 keeps only the -0.1 pixel, kept mean =
    # -0.1 / 20 = -0.005 < 0, so the 19 zeroed pixels are foreground: one 4-connected component
    # whose box is the whole 5 x 4 map. θ = 0, 0.5, 1: θ·max >= -0.1 keeps nothing: empty box.
    h = np.full((4, 5), -0.2, np.float32)
    h[1, 2] = -0.1
    grid = [0.0, 0.5, 1.0, 2.0]
    want = np.array([box_from_heatmap(h, t, "reference") for t in grid])
    assert want.tolist() == [[0.0] * 4] * 3 + [[0.0, 0.0, 5.0, 4.0]]
    assert np.array_equal(boxes_at_thresholds(h, grid, "reference"), want)


# ------------------------------------------------------------------- threshold policies
# Paper protocol, variant "paper" (min-max map, boxes: foreground h > θ, most pixels), C = 16: a
# 48 x 48 image maps x -> x / 2 - 4 into the crop. One three-level heatmap for every image:
#   0.3 on B = (1, 1, 15, 15), 0.55 on M = (4, 4, 12, 12), 1.0 on A = (6, 6, 10, 10), 0 elsewhere,
# so θ = 0.2 gives box B, θ = 0.4 box M, θ = 0.6 box A. "+1" IoUs with GT B: B 1, M 81/225 = 0.36,
# A 25/225 = 0.11; with GT A: A 1, M 25/81 = 0.31, B 25/225 = 0.11. Only the exact box reaches 0.5.
# GT B <- original (10, 10, 38, 38); GT A <- original (20, 20, 28, 28).
THREE_LEVELS = 0.3 * block(1, 1, 15, 15) + 0.25 * block(4, 4, 12, 12) + 0.45 * block(6, 6, 10, 10)
GT_B, GT_A = (10.0, 10.0, 38.0, 38.0), (20.0, 20.0, 28.0, 28.0)


def _policy_cfg() -> RunConfig:
    # fixed θ 0.4; candidates: grid {0.2, 0.6} + the fixed θ = (0.2, 0.4, 0.6)
    return RunConfig(variant="paper", eval=EvalConfig(theta=0.4, test_resize=24, test_crop=C, maxbox_thresholds=10,
                                                      theta_grid=(0.6, 0.2))).validate()


def _split(root: Path, gts: list[tuple[float, ...]]) -> Bench:
    root.mkdir()
    bench = Bench(root)
    for gt in gts:
        bench.add(0, [gt], RANKED, heat_is(THREE_LEVELS))
    return bench


def _evaluate(bench: Bench, cfg: RunConfig, thetas=None, protocol: str = "paper") -> EvalResult:
    from test_evaluate import TableModel

    return evaluate(TableModel(bench.table), bench.samples, cfg, protocol, CPU, batch_size=2, thetas=thetas)


@pytest.fixture
def policy_splits(tmp_path):
    cfg = _policy_cfg()
    val = _split(tmp_path / "val", [GT_A, GT_A])  # val likes θ = 0.6 (box A)
    test = _split(tmp_path / "test", [GT_B, GT_B, GT_A])  # test likes θ = 0.2 (box B on 2 of 3)
    grid = candidate_thetas(cfg)
    return cfg, _evaluate(val, cfg, grid), _evaluate(test, cfg, grid), test


def test_candidates_are_the_grid_plus_the_fixed_theta_ascending():
    assert candidate_thetas(_policy_cfg()) == (0.2, 0.4, 0.6)
    assert len(candidate_thetas(RunConfig())) == 21  # 0.00..0.95 (20) + the default θ 0.14


def test_sweep_metrics_per_theta(policy_splits):
    _, val, test, _ = policy_splits
    # test: θ 0.2 -> 2 hits of 3 (GT B twice); θ 0.4 -> none; θ 0.6 -> 1 (GT A)
    assert sweep_metrics(test, 0.5)["gt_known_loc"] == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert sweep_metrics(val, 0.5)["top1_loc"] == pytest.approx([0.0, 0.0, 1.0])  # val: GT A twice


def test_fixed_val_and_oracle_policies_on_a_crafted_split(policy_splits):
    cfg, val, test, _ = policy_splits
    got = threshold_policies(test, val, cfg)
    assert sorted(got) == ["fixed", "oracle", "val"]
    # fixed: θ 0.4 -> box M everywhere -> no hit on test
    assert got["fixed"] is test and got["fixed"].metrics["theta"] == 0.4 and got["fixed"].metrics["top1_loc"] == 0.0
    # val: θ chosen on val = 0.6 (the only θ with hits there), applied to test -> 1 of 3
    assert got["val"].metrics["theta"] == 0.6 and got["val"].metrics["gt_known_loc"] == pytest.approx(1 / 3)
    # oracle: θ chosen on test = 0.2 -> 2 of 3: strictly better than the honest val θ
    assert got["oracle"].metrics["theta"] == 0.2 and got["oracle"].metrics["top1_loc"] == pytest.approx(2 / 3)
    assert got["oracle"].metrics["top1_loc"] > got["val"].metrics["top1_loc"]
    # θ does not touch classification or MaxBoxAccV2
    for name in ("top1_cls", "top5_cls", "maxboxacc_v2"):
        assert got["val"].metrics[name] == got["oracle"].metrics[name] == test.metrics[name]
    # the oracle's records: box B (1, 1, 15, 15) in the crop frame, IoU 1 on the GT-B images
    records = got["oracle"].records
    assert records[0]["box"] == [1.0, 1.0, 15.0, 15.0] and records[0]["iou"] == 1.0
    assert [r["correct_top1_loc"] for r in records] == [True, True, False]


def test_the_sweep_at_any_theta_is_the_plain_evaluation_at_that_theta(policy_splits):
    cfg, _, test, bench = policy_splits
    plain = _evaluate(bench, cfg)  # no sweep
    assert plain.sweep is None and at_theta(test, 0.4, 0.5).records == plain.records == test.records
    with pytest.raises(ValueError, match="not in the sweep"):
        at_theta(test, 0.5, 0.5)
    # the standard protocol (boxes in original pixels, GT-known from the GT class's own map), each θ
    swept = _evaluate(bench, cfg, candidate_thetas(cfg), "standard")
    for theta in candidate_thetas(cfg):
        at = _evaluate(bench, dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, theta=theta)),
                       protocol="standard")
        assert at_theta(swept, theta, 0.5).records == at.records
        assert at_theta(swept, theta, 0.5).metrics == at.metrics


def test_no_validation_split_means_no_val_policy(policy_splits):
    cfg, _, test, _ = policy_splits
    assert sorted(threshold_policies(test, None, cfg)) == ["fixed", "oracle"]


def test_ties_choose_the_smallest_theta():
    # three θ, GT-known hits (image x θ): [[0, 1, 1], [0, 1, 1]] -> θ 0.5 and 0.9 tie at 100% -> 0.5
    records = [{"correct_top1_cls": True, "correct_top5_cls": True}] * 2
    sweep = ThresholdSweep(thetas=np.array([0.1, 0.5, 0.9]), boxes=np.zeros((2, 3, 4)),
                           ious=np.array([[0.0, 0.6, 0.7], [0.2, 0.9, 0.5]]),
                           gt_known_ious=np.array([[0.0, 0.6, 0.7], [0.2, 0.9, 0.5]]))
    result = EvalResult("paper", {}, records, sweep=sweep)
    assert choose_theta(result, "gt_known_loc", 0.5) == 0.5
    # Top-1 Loc: θ 0.5 -> 2 hits, θ 0.9 -> 2 hits (0.7, 0.5 >= 0.5): the tie again goes to 0.5
    assert choose_theta(result, "top1_loc", 0.5) == 0.5


def _at(gt_known: float, top1: float) -> EvalResult:
    return EvalResult("paper", {"gt_known_loc": gt_known, "top1_loc": top1}, [])


def test_resize_candidates_are_the_grid_plus_the_run_s_ascending():
    cfg = dataclasses.replace(RunConfig(), eval=dataclasses.replace(RunConfig().eval, test_resize=344,
                                                                    test_crop=224, resize_grid=(384, 256)))
    assert candidate_resizes(cfg) == (256, 344, 384)
    assert candidate_resizes(RunConfig()) == (RunConfig().eval.test_resize,)  # no grid: nothing to choose


def test_resize_policies_choose_s_on_val_and_on_test():
    cfg = RunConfig()  # eval.theta_metric = gt_known_loc
    # val prefers S = 256 (0.7); test prefers S = 384 (0.6): the oracle beats the honest val choice
    val = {256: _at(0.7, 0.5), 344: _at(0.6, 0.4), 384: _at(0.5, 0.3)}
    test = {256: _at(0.40, 0.30), 344: _at(0.50, 0.35), 384: _at(0.60, 0.45)}
    got = resize_policies(val, test, cfg)
    assert got == {"resize_val_S": 256.0, "top1_loc@resize_val": 0.30, "gt_known_loc@resize_val": 0.40,
                   "resize_oracle_S": 384.0, "top1_loc@resize_oracle": 0.45, "gt_known_loc@resize_oracle": 0.60}
    # ties go to the smallest S; no validation split -> only the oracle
    tied = {256: _at(0.5, 0.1), 344: _at(0.5, 0.2)}
    assert resize_policies({}, tied, cfg) == {"resize_oracle_S": 256.0, "top1_loc@resize_oracle": 0.1,
                                              "gt_known_loc@resize_oracle": 0.5}
    # the metric maximised is eval.theta_metric: Top-1 Loc picks S = 384 on val
    by_top1 = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, theta_metric="top1_loc"))
    assert resize_policies({256: _at(0.9, 0.1), 384: _at(0.1, 0.2)}, test, by_top1)["resize_val_S"] == 384.0
    # a NaN metric at one S is never chosen, wherever it stands in the dict (NaN compares false both ways)
    nan = float("nan")
    for order in ((256, 344), (344, 256)):
        with_nan = {s: {256: _at(nan, 0.1), 344: _at(0.4, 0.2)}[s] for s in order}
        assert resize_policies(with_nan, test, cfg)["resize_val_S"] == 344.0
    assert "resize_val_S" not in resize_policies({256: _at(nan, 0.1)}, test, cfg)


def test_resize_grid_below_the_crop_is_refused():
    from kdcicam.core.config import ConfigError

    bad = dataclasses.replace(RunConfig(), eval=dataclasses.replace(RunConfig().eval, resize_grid=(100,)))
    with pytest.raises(ConfigError, match=r"eval.resize_grid\[0\]"):
        bad.validate()


# ------------------------------------------------------------------- identity of a run

def test_new_eval_keys_keep_old_run_ids_unless_set():
    base = RunConfig()
    audit = dataclasses.replace(base, eval=dataclasses.replace(base.eval, audit_epochs=True))
    on_test = dataclasses.replace(base, eval=dataclasses.replace(base.eval, select_on="test"))
    # audit_epochs never enters the identity; select_on does once it is not the default
    assert config_hash(audit) == config_hash(base) != config_hash(on_test)
    assert load_registry().profiles["smoke"].overrides["eval.audit_epochs"] is True
    assert "eval.audit_epochs" not in load_registry().profiles["paper"].overrides


# ----------------------------------------------------------- checkpoint selection in a run
# The per-epoch evaluations are scripted (the final one is real): GT-known Loc per epoch
#   test: 0.2, 0.9, 0.5   val: 0.1, 0.3, 0.8
# so selecting on test keeps epoch 1 as best_gt_known_loc, selecting on val keeps epoch 2.
SCRIPT = {"test": [0.2, 0.9, 0.5], "val": [0.1, 0.3, 0.8]}


def _scripted_run(select_on: str, index, tmp_path: Path, monkeypatch) -> tuple[str, Path, dict]:
    import kdcicam.execution.epoch_evals as epoch_evals_mod
    import kdcicam.execution.runner as runner_mod
    from kdcicam.execution.plan import PlannedRun, run_id_for

    real = epoch_evals_mod.evaluate
    calls = {"test": 0, "val": 0}

    def scripted(model, samples, cfg, protocol, device, *, thetas=None, **kwargs):
        if thetas is not None:  # the final evaluation of the kept checkpoints: real
            return real(model, samples, cfg, protocol, device, thetas=thetas, **kwargs)
        split = "test" if samples is index.test else "val"
        value = SCRIPT[split][calls[split]]
        calls[split] += 1
        return EvalResult(protocol, {"top1_cls": 0.5, "top1_loc": value / 2, "gt_known_loc": value, "theta": 0.14},
                          [])

    monkeypatch.setattr(epoch_evals_mod, "evaluate", scripted)
    # no resize audit here: its evaluations (after training) would run past the script
    cfg = with_classes(smoke_config("student", **{"train.epochs": 3, "eval.select_on": select_on,
                                                  "eval.resize_grid": []}), index)
    planned = PlannedRun(run_id=run_id_for(cfg, index.fingerprint), cfg=cfg, dataset=index)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with open_store(url) as store:
        ctx = runner_mod.RunContext(store=store, artifacts_root=tmp_path / "art", device=CPU)
        assert runner_mod.execute(planned, index, ctx).status == "finished"
    return url, tmp_path / "art" / planned.run_id, calls


@pytest.mark.parametrize("select_on, best_epoch, decision_split, decisions", [
    ("val", 2, "val", 0),  # val's best epoch; the test split only audited (smoke: audit_epochs on)
    ("test", 1, "test_decision", 3),  # test's best epoch; each of the 3 epochs looked at the test split
])
def test_select_on_picks_the_epoch_its_split_likes_and_counts_test_decisions(
        select_on, best_epoch, decision_split, decisions, smoke_cache, tmp_path, monkeypatch, one_thread):  # noqa: F811
    index = smoke_index(smoke_cache)
    url, run_dir, calls = _scripted_run(select_on, index, tmp_path, monkeypatch)
    assert calls == {"test": 3, "val": 3}  # both splits scored every epoch (val unused under "test")
    assert int(load_checkpoint(run_dir / "best_gt_known_loc.pt")["epoch"]) == best_epoch
    with open_store(url) as store:
        (run,) = store.list_runs()
        epochs = store.epoch_metrics(run.id)
        finals = store.final_metrics([run.id])
        val_records = store.get_image_records(run.id, "paper", "last", "test", "val")
    gt = epochs[epochs["name"] == "gt_known_loc"]
    by_split = {s: g.sort_values("epoch")["value"].tolist() for s, g in gt.groupby("split")}
    audit_split = "test_audit" if select_on == "val" else "test_decision"
    assert by_split[decision_split] == pytest.approx(SCRIPT[select_on])  # the deciding split's numbers
    assert by_split[audit_split] == pytest.approx(SCRIPT["test"])  # what test selection would have seen
    assert by_split["val"] == pytest.approx(SCRIPT["val"])
    assert set(by_split) == {"val", audit_split}
    # every stored group counts the test decisions: 0 on val, one per epoch on test
    counts = finals.loc[finals["name"] == "test_decisions", "value"]
    assert len(counts) > 0 and set(counts) == {float(decisions)}
    # each θ policy is stored (with its θ) and has its own per-image records
    assert set(finals["threshold_policy"]) == {"fixed", "val", "oracle"}
    assert len(val_records) == len(index.test)
    # the report's per-run audit: test selection would have printed 0.9 (epoch 1)
    audit = epoch_audit(run.id, epochs, ("gt_known_loc",))
    assert audit.best == {"gt_known_loc": 0.9} and audit.best_epoch == {"gt_known_loc": 1}


# --------------------------------------------------------------------------------- report
# Table 3's Base at two seeds, +ConPool at two seeds (fractions):
#   Base     fixed Top-1 Loc 0.50, 0.54 | val θ 0.52, 0.56 | oracle 0.58, 0.60 | audit best 0.55, 0.57
#            S val 0.49, 0.55 | S oracle 0.51, 0.57 (Base only: the resize audit of the last checkpoint)
#   +ConPool fixed Top-1 Loc 0.53, 0.53 (Δ vs Base: 53 - 52 = +1.0 < Base's seed std 2.83 -> "≈")
BASE = {"fixed": (0.50, 0.54), "val": (0.52, 0.56), "oracle": (0.58, 0.60), "audit": (0.55, 0.57),
        "resize_val": (0.49, 0.55), "resize_oracle": (0.51, 0.57)}


def _report_store(url: str) -> None:
    cfg = {"profile": "quick", "variant": "reference", "data": {"dataset": "synthetic"},
           "model": {"backbone": "vgg16", "context_pool": False}, "train": {"epochs": 2}}
    with open_store(url) as store:
        for cell, pool in (("base", False), ("conpool", True)):
            for seed in (0, 1):
                rid = f"{cell}{seed}"
                c = json.loads(json.dumps(cfg))
                c["model"]["context_pool"] = pool
                store.get_or_create_run(rid, config_hash="h" + rid, role="student", profile="quick",
                                        variant="reference", dataset="synthetic", dataset_fingerprint="fp",
                                        seed=seed, config=c, labels={"table3": [cell]})
                store.claim_run(rid, pid=1, host="box")
                for policy, theta in (("fixed", 0.14), ("val", 0.3), ("oracle", 0.45)):
                    loc = BASE[policy][seed] if cell == "base" else 0.53
                    store.set_final_metrics(rid, "paper", "last", policy, "test",
                                            {"top1_cls": 0.7, "top1_loc": loc, "gt_known_loc": loc + 0.1,
                                             "theta": theta, "test_decisions": 0.0})
                if cell == "base":
                    store.set_final_metrics(rid, "paper", "last", "fixed", "test",
                                            {f"top1_loc@{w}": BASE[w][seed] for w in ("resize_val", "resize_oracle")})
                    for epoch, value in enumerate((0.40, BASE["audit"][seed])):
                        store.add_epoch_metrics(rid, epoch, "test_audit", {"top1_loc": value})
                store.finish_run(rid)


def test_report_shows_the_selection_audit_best_of_n_and_noise_marks(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _report_store(url)
    reg = load_registry()
    with open_store(url) as store:
        data = build_report(store, reg, protocols=("paper",), table_keys=["table3"])
    (scope,) = data.scopes
    table = scope.tables["paper"][0]
    base, con = (next(r for r in table.rows if r.cell == k) for k in ("base", "conpool"))
    v = base.values["top1_loc"]
    assert (v.mean, v.best) == (pytest.approx(52.0), pytest.approx(54.0))  # mean of 50, 54; best seed 54
    # +ConPool: Δ = 53 - 52 = +1.0; spread = max(std 2.83 (Base), 0 (+ConPool)) -> within the noise
    assert con.values["top1_loc"].delta == pytest.approx(1.0) and con.values["top1_loc"].within_noise
    audit = scope.audit["paper"]
    row = next(r for r in audit.rows if r.cell == "base" and r.metric == "top1_loc")
    assert row.reported == pytest.approx(52.0) and row.best_of_n == pytest.approx(54.0)
    # test-selected: max over epochs per seed = 55, 57 -> 56; Δ = mean(55 - 50, 57 - 54) = +4.0
    assert (row.test_selected, row.d_test_selected, row.n_audited) == (pytest.approx(56.0), pytest.approx(4.0), 2)
    # θ val: 52, 56 -> 54 (Δ +2.0); oracle: 58, 60 -> 59 (Δ +7.0); θ means 0.14 / 0.3 / 0.45
    assert (row.val_theta, row.d_val_theta) == (pytest.approx(54.0), pytest.approx(2.0))
    assert (row.oracle_theta, row.d_oracle_theta) == (pytest.approx(59.0), pytest.approx(7.0))
    assert row.thetas == pytest.approx((0.14, 0.3, 0.45)) and row.select_on == "val" and row.test_decisions == 0
    # S val: 49, 55 -> 52 (Δ mean(-1, +1) = 0.0); S oracle: 51, 57 -> 54 (Δ +2.0)
    assert (row.val_resize, row.d_val_resize) == (pytest.approx(52.0), pytest.approx(0.0))
    assert (row.oracle_resize, row.d_oracle_resize) == (pytest.approx(54.0), pytest.approx(2.0))
    con_row = next(r for r in audit.rows if r.cell == "conpool" and r.metric == "top1_loc")
    assert con_row.test_selected is None and con_row.n_audited == 0  # no per-epoch test numbers
    md = render(data, reg, "md", figures=False).text
    assert "| ↳ best of 2 seeds | | 70.0 | — | 54.0 |" in md
    # +ConPool's Top-1 Loc: Δ +1.0, the paper's +0.9 (66.5 - 65.6): same sign, within the seed spread
    assert "(Δ +1.0 ✓ ≈)" in md and "≈: the change is smaller than the seed spread" in md
    assert "### Selection audit (paper protocol)" in md
    assert "| table3 | Base | Top-1 Loc | 2 | 52.0 | 54.0 | 56.0 (Δ +4.0) | 52.0 (Δ 0.0) | 54.0 (Δ +2.0) | 59.0 (Δ +7.0) | " \
           "52.0 (Δ 0.0) | 54.0 (Δ +2.0) | 0.14 / 0.30 / 0.45 | val | 0 |" in md
    html = render(data, reg, "html", figures=False).text
    assert "Selection audit" in html and "best of 2: 54.0" in html
    tex = render(data, reg, "latex", figures=False).text
    assert "Selection audit (paper protocol)" in tex and "56.0 (\\ensuremath{\\Delta} +4.0)" in tex
    assert "the run's own θ (eval.theta))" in audit.notes[0]


def test_under_theta_val_the_audit_reports_val_and_shows_the_fixed_theta_beside(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _report_store(url)
    with open_store(url) as store:
        data = build_report(store, load_registry(), protocols=("paper",), table_keys=["table3"],
                            threshold_policy="val")
    audit = data.scopes[0].audit["paper"]
    row = next(r for r in audit.rows if r.cell == "base" and r.metric == "top1_loc")
    # reported at θ val: 52, 56 -> 54; θ fixed 50, 54 -> 52 (Δ -2.0); θ val against itself Δ 0
    assert row.reported == pytest.approx(54.0)
    assert (row.fixed_theta, row.d_fixed_theta) == (pytest.approx(52.0), pytest.approx(-2.0))
    assert (row.val_theta, row.d_val_theta) == (pytest.approx(54.0), pytest.approx(0.0))
    assert "Reported: the number the table shows (the cell's checkpoint, θ chosen on the validation split)" \
        in audit.notes[0]


def test_claims_name_their_threshold_and_selection_policy(tmp_path):
    from typer.testing import CliRunner

    from kdcicam.analysis.claims import evaluate_claims
    from kdcicam.cli.claims import claims_cmd

    url = f"sqlite:///{tmp_path / 'r.db'}"
    _report_store(url)
    reg = load_registry()
    with open_store(url) as store:
        runs = store.list_runs()
        finals = store.final_metrics([r.id for r in runs])

        def records(run_id, protocol, selection, policy="fixed"):
            return store.get_image_records(run_id, protocol, selection, "test", policy)

        got = {policy: next(r for r in evaluate_claims(reg, runs, finals, records, threshold_policy=policy)
                            if r.claim == "conpool-improves-loc" and r.metric == "top1_loc")
               for policy in ("fixed", "val", "oracle")}
    # +ConPool 53, 53 minus Base per seed: fixed (50, 54) -> +3, -1 -> +1.0; val (52, 56) -> +1, -3 -> -1.0;
    # oracle (58, 60) -> -5, -7 -> -6.0
    assert [got[p].ours_delta for p in ("fixed", "val", "oracle")] == pytest.approx([1.0, -1.0, -6.0])
    assert all(got[p].threshold_policy == p and got[p].select_on == "val" for p in got)
    assert got["fixed"].selection == "last / last" and got["fixed"].n_seeds == 2
    app = typer_app(claims_cmd)
    out = CliRunner().invoke(app, ["--db", url, "--threshold-policy", "oracle"])
    assert out.exit_code == 0, out.output
    assert "θ oracle" in out.stdout and "ORACLE θ (chosen on the test split)" in out.stdout
    assert "last / last on val" in out.stdout
    md = CliRunner().invoke(app, ["--db", url, "--md"])
    assert md.exit_code == 0, md.output
    row = next(line for line in md.stdout.splitlines() if "top1_loc" in line and "context pool" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # fixed θ: per-seed differences +3, -1 -> mean +1, sd 2.828, t(1) 12.706 x 2.828 / sqrt(2) = 25.41
    assert cells[1:7] == ["top1_loc", "last / last on val", "+0.9", "+1.0", "[−24.4, +26.4]", "2"]  # no scope column
    assert cells[-1] == "inconclusive"
    bad = CliRunner().invoke(app, ["--db", url, "--threshold-policy", "best"])
    assert "--threshold-policy 'best': must be one of fixed, val, oracle" in str(bad.exception)


def typer_app(command):
    import typer

    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(command)
    return app


# -------------------------------------------------------------------------------- compare

def _records(correct: np.ndarray) -> list[dict]:
    return [{"image_id": f"img{i:03d}", "label": 0, "top5": [0, 1, 2, 3, 4], "top5_scores": [0.5, 0.2, 0.1, 0.1, 0.1],
             "box": [0.0, 0.0, 1.0, 1.0], "iou": 0.6, "correct_top1_cls": bool(c), "correct_top5_cls": bool(c),
             "correct_top1_loc": bool(c), "correct_top5_loc": bool(c), "correct_gt_known": bool(c)}
            for i, c in enumerate(correct)]


def _compare_store(url: str) -> None:
    # A: right on images 0-59 of 100, B: on 0-19 (40 discordant, all A's) under every θ policy
    with open_store(url) as store:
        for rid, n_right, select_on in (("aaaa0000", 60, "val"), ("bbbb0000", 20, "val"), ("cccc0000", 20, "test")):
            cfg = {"variant": "reference", "eval": {"select_on": select_on}}
            store.get_or_create_run(rid, config_hash="h" + rid, role="student", profile="quick", variant="reference",
                                    dataset="synthetic", dataset_fingerprint="fp", seed=0, config=cfg)
            store.claim_run(rid, pid=1, host="box")
            correct = np.arange(100) < n_right
            for policy in ("fixed", "val"):
                store.set_final_metrics(rid, "paper", "last", policy, "test", {"top1_loc": n_right / 100})
                store.add_image_records(rid, "paper", "last", "test", _records(correct), threshold_policy=policy)
            store.finish_run(rid)


def test_compare_gives_a_verdict_only_when_policies_match(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    _compare_store(url)
    with open_store(url) as store:
        same = compare_runs(store, "aaaa0000", "bbbb0000", threshold_policy="val", n_resamples=200)
        mixed = compare_runs(store, "aaaa0000", "bbbb0000", threshold_policy="val", threshold_policy_b="fixed",
                             n_resamples=200)
        on_test = compare_runs(store, "aaaa0000", "cccc0000", n_resamples=200)
    assert same.mismatch == [] and same.tests[0].verdict == "A better" and same.to_dict()["threshold_policy"] == "val"
    assert mixed.mismatch == ["threshold policy (val vs fixed)"] and {t.verdict for t in mixed.tests} == {"no verdict"}
    assert mixed.metrics[0] == ("top1_loc", pytest.approx(60.0), pytest.approx(20.0), pytest.approx(40.0))
    assert "threshold policy" in mixed.warnings[0]
    text = format_comparison(mixed)
    assert text.rstrip().endswith("no verdict: the runs differ in threshold policy (val vs fixed)")
    assert on_test.mismatch == ["eval.select_on (val vs test)"] and "eval.select_on" in on_test.warnings[0]
    assert on_test.to_dict()["verdict_withheld"] == "no verdict: the runs differ in eval.select_on (val vs test)"


# ------------------------------------------------------------------------------ migration

def test_a_store_at_revision_0001_is_upgraded_and_its_records_read_as_fixed(tmp_path):
    path = tmp_path / "old.db"
    cfg = store_open._alembic_config()
    engine = store_open.create_store_engine(f"sqlite:///{path}")
    with engine.connect() as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")  # the schema as kdcicam shipped it before this issue
    engine.dispose()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO runs (id, config_hash, role, profile, variant, dataset, seed, config, status, "
                "created_at, labels) VALUES ('r1', 'h', 'student', 'smoke', 'paper', 'synthetic', 0, '{}', "
                "'finished', '2025-01-01 00:00:00', '{}')")
    raw.execute("INSERT INTO image_records (run_id, protocol, selection, split, image_id, label, top5, "
                "top5_scores, box, iou, correct_top1_cls, correct_top5_cls, correct_top1_loc, correct_top5_loc, "
                "correct_gt_known) VALUES ('r1', 'paper', 'last', 'test', 'img0', 0, '[0]', '[1.0]', NULL, 0.7, "
                "1, 1, 1, 1, 1)")
    raw.commit()
    raw.close()
    with open_store(f"sqlite:///{path}") as store:
        fixed = store.get_image_records("r1", "paper", "last", "test")
        assert list(fixed["image_id"]) == ["img0"] and fixed["correct_gt_known"].tolist() == [True]
        assert store.get_image_records("r1", "paper", "last", "test", "oracle").empty
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
    raw.close()
