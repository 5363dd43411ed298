"""`kdcicam claims --findings`: the ledger as quotable sentences, claim by claim."""

from __future__ import annotations

import pytest
from _stored import add_finished_run

from kdcicam.analysis.claim_result import ClaimResult
from kdcicam.cli import main
from kdcicam.report.findings import finding_sentence
from kdcicam.store import open_store


def _row(**kw) -> ClaimResult:
    base = dict(table="table3", claim="c", text="t", scope="S", protocol="standard", variant="reference",
                selection="last / last", select_on="val", threshold_policy="val", metric="top1_loc",
                paper_delta=0.9, ours_delta=0.4, ci_lo=0.1, ci_hi=0.7, n_seeds=3, interval="seeds (t)",
                status="holds, smaller than the paper's", p_value=0.01, p_holm=0.04, family_size=4, seeds_needed=5)
    return ClaimResult(**{**base, **kw})


def test_a_verdict_reads_as_one_sentence_with_what_produced_it():
    assert finding_sentence(_row()) == (
        "Top-1 Loc, standard protocol: **holds, smaller than the paper's**: ours +0.4 points, 95 % [+0.1, +0.7] over "
        "3 seeds (the paper's +0.9); p 0.01, Holm 0.04 (family of 4).")


def test_each_seeds_difference_follows_the_mean():
    text = finding_sentence(_row(seed_deltas=((0, 1.26), (1, -0.5), (3, 0.44))))
    assert "over 3 seeds (the paper's +0.9); by seed: 0 +1.3, 1 −0.5, 3 +0.4; p 0.01" in text


def test_an_inconclusive_row_says_how_many_seeds_would_decide_it():
    text = finding_sentence(_row(status="inconclusive", ci_lo=-1.0, p_value=0.3, p_holm=0.9, seeds_needed=12))
    assert "**inconclusive**" in text and "12 seeds would detect the paper's Δ (80 % power)" in text


def test_one_seed_shows_the_per_image_interval_as_a_description_only():
    text = finding_sentence(_row(n_seeds=1, ci_lo=None, ci_hi=None, interval="1 seed", status="inconclusive (1 seed)",
                                 image_ci_lo=-2.0, image_ci_hi=3.0, p_value=None, p_holm=None, seeds_needed=None))
    assert text == ("Top-1 Loc, standard protocol: **inconclusive (1 seed)**: ours +0.4 points from one seed (the "
                    "paper's +0.9); per image [−2.0, +3.0], a description of the test set, not evidence.")


def test_a_figure_1b_margin_names_its_seeds():
    text = finding_sentence(_row(metric="top1_cls & top1_loc", paper_delta=None, ours_delta=2.5, ci_lo=-1.0, ci_hi=6.0,
                                 interval="best-of-settings (mean of 3 seeds); holds in 2 of 3 seeds; bootstrap",
                                 per_seed=(1.0, 3.0, -0.5), status="inconclusive", seeds_needed=None))
    assert text == ("Top-1 Cls & Top-1 Loc, standard protocol: **inconclusive**: margin +2.5 points, 95 % [−1.0, +6.0] "
                    "(bootstrap over seeds), each setting at its mean of 3 seeds; 2 of 3 seeds hold it alone.")


@pytest.fixture()
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def test_findings_group_rows_by_claim_and_scope_and_skip_claims_not_run(store, capsys):
    for seed, loc in enumerate([10, 11, 9]):
        add_finished_run(store, f"base{seed}", "table3", "base", seed, {"top1_loc": 0.40, "gt_known_loc": 0.60})
        add_finished_run(store, f"pool{seed}", "table3", "conpool", seed,
                         {"top1_loc": 0.40 + loc / 100, "gt_known_loc": 0.60})
    with pytest.raises(SystemExit) as exit_:
        main(["claims", "--db", store.url, "--findings"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "### Table 3: The causal context pool improves localization over Base" in out
    assert "- **reference variant** (synthetic (data fp) / vgg16 / profile quick / variant reference):" in out
    assert "  - Top-1 Loc, paper protocol: **holds, larger than the paper's**: ours +10.0 points" in out
    assert "KD improves both" not in out  # its cells never ran
    assert "  - PxAP: not measured under the paper protocol." in out  # its cells ran, under the paper protocol only
