"""``kdcicam compare``: paired tests with hand-checked answers, run naming, refusals, output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from kdcicam.analysis.compare import compare_runs, config_diff, format_comparison, resolve_name
from kdcicam.analysis.stats import mcnemar_exact, paired_bootstrap_ci
from kdcicam.analysis.verdicts import paired_verdict
from kdcicam.cli.report import register
from kdcicam.core.errors import DataError, KdcicamError, RunError, StoreError
from kdcicam.store import open_store

N = 100
CFG = {"profile": "quick", "variant": "reference", "model": {"backbone": "vgg16", "context_pool": True},
       "train": {"lr": 0.002, "seed": 0}, "eval": {"theta": 0.14}}


def _records(correct: np.ndarray, ids: list[str] | None = None) -> list[dict]:
    """Per-image records whose every correctness flag is ``correct`` (N,) bool."""
    ids = ids or [f"img{i:03d}" for i in range(len(correct))]
    return [{"image_id": image_id, "label": 0, "top5": [0, 1, 2, 3, 4], "top5_scores": [0.5, 0.2, 0.1, 0.1, 0.1],
             "box": [0.0, 0.0, 1.0, 1.0], "iou": 0.6, "correct_top1_cls": bool(c), "correct_top5_cls": bool(c),
             "correct_top1_loc": bool(c), "correct_top5_loc": bool(c), "correct_gt_known": bool(c)}
            for image_id, c in zip(ids, correct)]


def _add(store, run_id: str, correct: np.ndarray, *, seed: int = 0, labels: dict | None = None,
         fingerprint: str = "fp-same", variant: str = "reference", ids: list[str] | None = None,
         **config) -> None:
    cfg = json.loads(json.dumps(CFG))
    cfg["variant"] = variant
    cfg["train"]["seed"] = seed
    for dotted, value in config.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    store.get_or_create_run(run_id, config_hash="h" + run_id, role="student", profile="quick", variant=variant,
                            dataset="synthetic", dataset_fingerprint=fingerprint, seed=seed, config=cfg,
                            labels=labels or {})
    store.claim_run(run_id, pid=1, host="box")
    acc = float(np.mean(correct))
    store.set_final_metrics(run_id, "paper", "last", "fixed", "test",
                            {"top1_cls": acc, "top1_loc": acc, "gt_known_loc": acc, "theta": 0.14})
    store.add_image_records(run_id, "paper", "last", "test", _records(correct, ids))
    store.finish_run(run_id)


# A: right on images 0-59, B: right on 0-19 -> 40 discordant images, all A's (b10 = 40, b01 = 0).
A_CORRECT = np.arange(N) < 60
B_CORRECT = np.arange(N) < 20


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with open_store(url) as store:
        _add(store, "aaaa0000", A_CORRECT, labels={"table3": ["conpool"]}, model__context_pool=True)
        _add(store, "bbbb0000", B_CORRECT, labels={"table3": ["base"]}, model__context_pool=False)
        _add(store, "bbbb0001", B_CORRECT, seed=1, labels={"table3": ["base"]}, model__context_pool=False)
        _add(store, "cccc0000", A_CORRECT, fingerprint="fp-other")
        _add(store, "dddd0000", A_CORRECT, ids=[f"other{i:03d}" for i in range(N)])
        _add(store, "eeee0000", B_CORRECT, variant="paper", eval__theta=0.2)
    return url


def make_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """Test root."""

    register(app)
    return app


# -------------------------------------------------------------------------------- statistics

def test_mcnemar_hand_checked():
    # b01 = 1 (A wrong, B right), b10 = 9: two-sided p = 2 * P(X <= 1 | n=10, 1/2) = 2 * 11/1024 = 22/1024
    a = np.array([False] + [True] * 9 + [True] * 5)
    b = np.array([True] + [False] * 9 + [True] * 5)
    b01, b10, p = mcnemar_exact(a, b)
    assert (b01, b10) == (1, 9) and p == pytest.approx(22 / 1024)
    assert mcnemar_exact(b, a)[:2] == (9, 1) and mcnemar_exact(b, a)[2] == pytest.approx(22 / 1024)


def test_identical_runs_show_no_difference():
    b01, b10, p = mcnemar_exact(A_CORRECT, A_CORRECT)
    delta, lo, hi = paired_bootstrap_ci(A_CORRECT, A_CORRECT, n_resamples=500, seed=0)
    assert (b01, b10, p) == (0, 0, 1.0) and (delta, lo, hi) == (0.0, 0.0, 0.0)
    assert paired_verdict(delta, p, lo, hi) == "no significant difference at 5%"


def test_a_clear_win_is_significant():
    b01, b10, p = mcnemar_exact(A_CORRECT, B_CORRECT)
    assert (b01, b10) == (0, 40) and p == pytest.approx(2 * 0.5 ** 40)
    delta, lo, hi = paired_bootstrap_ci(A_CORRECT, B_CORRECT, n_resamples=2000, seed=0)
    # per-image differences: 40 ones, 60 zeros -> delta 0.4, bootstrap sd sqrt(0.4 * 0.6 / 100) ~ 0.049
    assert delta == pytest.approx(0.4) and 0.28 < lo < 0.35 and 0.45 < hi < 0.52
    assert paired_verdict(delta, p, lo, hi) == "A better" and paired_verdict(-delta, p, -hi, -lo) == "B better"
    assert paired_bootstrap_ci(A_CORRECT, B_CORRECT, n_resamples=2000, seed=0) == (delta, lo, hi)


def test_bootstrap_degenerate_inputs():
    assert all(np.isnan(paired_bootstrap_ci([], [], n_resamples=10, seed=0)))
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1, 0], [1], n_resamples=10, seed=0)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_config_diff_lists_only_differing_dotted_keys():
    a = {"model": {"width": 0.125, "backbone": "vgg16"}, "train": {"lr": 0.001}}
    b = {"model": {"width": 0.25, "backbone": "vgg16"}, "train": {"lr": 0.001, "seed": 1}}
    assert config_diff(a, b) == [("model.width", 0.125, 0.25), ("train.seed", "<absent>", 1)]


# ------------------------------------------------------------------------------------ naming

def test_names_by_id_prefix_and_table_cell_seed(db):
    with open_store(db) as store:
        assert resolve_name(store, "aaaa").id == "aaaa0000"
        assert resolve_name(store, "table3/conpool").id == "aaaa0000"  # the only seed
        assert resolve_name(store, "table3/base@1").id == "bbbb0001"
        with pytest.raises(StoreError, match=r"ambiguous: table3/base has seeds 0, 1; name one, e.g. table3/base@0"):
            resolve_name(store, "table3/base")
        with pytest.raises(StoreError, match=r"no run of table3/base has seed 7 \(seeds: 0, 1\)"):
            resolve_name(store, "table3/base@7")
        with pytest.raises(StoreError, match="no run is labelled table4/student"):
            resolve_name(store, "table4/student")
        with pytest.raises(StoreError, match="must be an integer"):
            resolve_name(store, "table3/base@x")
        with pytest.raises(StoreError, match="no run matches 'zzzz'"):
            resolve_name(store, "zzzz")


# --------------------------------------------------------------------------------- comparing

def test_compare_a_clear_win(db):
    with open_store(db) as store:
        result = compare_runs(store, "table3/conpool", "table3/base@0", n_resamples=500)
    assert result.config_diff == [("model.context_pool", True, False)]
    assert [m[0] for m in result.metrics] == ["top1_cls", "top1_loc", "gt_known_loc"]
    assert result.metrics[0] == ("top1_cls", pytest.approx(60.0), pytest.approx(20.0), pytest.approx(40.0))
    assert result.other == [("theta", 0.14, 0.14)]  # not an accuracy: not scaled to percent
    assert [t.metric for t in result.tests] == ["top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc"]
    test = result.tests[0]
    assert (test.n_images, test.b01, test.b10, test.verdict) == (100, 0, 40, "A better")
    assert test.delta == pytest.approx(40.0) and test.ci_lo > 0 and result.warnings == []


def test_compare_a_run_with_itself(db):
    with open_store(db) as store:
        result = compare_runs(store, "aaaa0000", "aaaa", n_resamples=200)
    assert result.config_diff == [] and all(t.p_value == 1.0 for t in result.tests)
    assert all(t.ci_lo <= 0 <= t.ci_hi and t.verdict.startswith("no significant") for t in result.tests)


@pytest.mark.parametrize("other, reason", [
    ("cccc0000", "different test sets (dataset fingerprints fp-same vs fp-other)"),
    ("dddd0000", "their test images differ (100 only in A, 100 only in B)"),
])
def test_different_test_sets_are_refused(db, other, reason):
    with open_store(db) as store:
        with pytest.raises(DataError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            compare_runs(store, "aaaa0000", other)


def test_missing_evaluation_is_one_line_error(db):
    with open_store(db) as store:
        with pytest.raises(RunError, match=r"no final metrics for protocol standard, selection last "
                                           r"\(evaluated: paper/last\)"):
            compare_runs(store, "aaaa0000", "bbbb0000", protocol="standard")


# ----------------------------------------------------------------------------------------- CLI

def test_cli_text_output_and_variant_warning(db):
    result = CliRunner().invoke(make_app(), ["compare", "aaaa0000", "eeee0000", "--db", db, "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ("warning: the runs differ in variant, eval.theta: their numbers were not produced "
                             "the same way\n")
    out = result.stdout
    assert "config differences (2):" in out and "eval.theta" in out and "variant" in out
    assert "train.lr" not in out  # equal keys are not listed
    # the variants differ: the numbers and paired tests are shown, but no verdict (issue 12)
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("top1_loc") and ln.rstrip().endswith(
        "no verdict"))
    assert line.split()[:3] == ["top1_loc", "60.00", "20.00"] and "A better" not in out
    assert out.rstrip().endswith("no verdict: the runs differ in variant (reference vs paper); for the variants' "
                                 "difference over seeds: kdcicam claims --variants")


def test_cli_json(db):
    result = CliRunner().invoke(make_app(), ["compare", "table3/conpool", "table3/base@0", "--db", db, "--json",
                                             "--resamples", "200"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["a"]["id"], data["b"]["id"], data["unit"]) == ("aaaa0000", "bbbb0000", "percent")
    assert data["config_diff"] == [{"key": "model.context_pool", "a": True, "b": False}]
    test = data["paired_tests"][0]
    assert (test["metric"], test["b01"], test["b10"], test["verdict"]) == ("top1_cls", 0, 40, "A better")


def test_cli_refusal_is_a_user_error(db):
    result = CliRunner().invoke(make_app(), ["compare", "aaaa0000", "cccc0000", "--db", db])
    # kdcicam.cli.main prints a KdcicamError as one line and exits 2
    assert isinstance(result.exception, KdcicamError) and "\n" not in str(result.exception)
    missing = CliRunner().invoke(make_app(), ["compare", "aaaa", "bbbb", "--db", str(Path(db[10:]).parent / "x.db")])
    assert isinstance(missing.exception, StoreError) and "no run store" in str(missing.exception)


def test_one_rule_reads_both_tests_and_says_when_they_disagree():
    from kdcicam.analysis.compare import paired_tests

    # 1000 images, A right and B wrong on 35, A wrong and B right on 20: McNemar p = 0.058 while the bootstrap
    # interval of +1.5 points (per-image sd ~0.23, se ~0.74 points) excludes zero: one verdict, not two
    n = 1000
    a = np.array([True] * 35 + [False] * 20 + [True] * 500 + [False] * 445)
    b = np.array([False] * 35 + [True] * 20 + [True] * 500 + [False] * 445)
    frame = {f"correct_{k}": None for k in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known")}
    ra = pd.DataFrame({"image_id": range(n), **{k: a for k in frame}})
    rb = pd.DataFrame({"image_id": range(n), **{k: b for k in frame}})
    tests = paired_tests(ra, rb, n_resamples=2000, seed=0)
    t = tests[0]
    assert (t.b01, t.b10) == (20, 35) and 0.05 < t.p_value < 0.06 and t.ci_lo > 0
    assert t.verdict == "tests disagree: no verdict"
    # five identical flags: Holm multiplies the smallest p by 5 (all equal here, so every adjusted p is 5p)
    assert t.p_holm == pytest.approx(min(1.0, 5 * t.p_value))


def test_paired_verdict_needs_both_tests():
    from kdcicam.analysis.verdicts import paired_verdict

    assert paired_verdict(2.0, 0.001, 0.5, 3.5) == "A better"
    assert paired_verdict(-2.0, 0.001, -3.5, -0.5) == "B better"
    assert paired_verdict(2.0, 0.2, 0.5, 3.5) == "tests disagree: no verdict"
    assert paired_verdict(2.0, 0.001, -0.5, 3.5) == "tests disagree: no verdict"
    assert paired_verdict(0.5, 0.4, -0.5, 1.5) == "no significant difference at 5%"


def test_compare_a_run_with_itself_says_so(db):
    with open_store(db) as store:
        result = compare_runs(store, "aaaa0000", "aaaa", n_resamples=200)
    assert "A and B are one run: every difference is zero by construction" in result.notes
    assert "A and B are one run" in format_comparison(result)
