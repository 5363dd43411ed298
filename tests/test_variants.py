"""Variant agreement (claim 7): the paper and reference variants side by side, on constructed stores."""

from __future__ import annotations

import pytest
from _stored import add_finished_run

from kdcicam.analysis.claims import test_records
from kdcicam.analysis.results import ScopeKey
from kdcicam.analysis.variants import scope_pairs, variant_agreement
from kdcicam.registry.ablations import load_registry
from kdcicam.store import open_store


def _run(store, run_id, variant, cell, seed, metrics, correct=None, fingerprint="fp", table="table3"):
    add_finished_run(store, run_id, table, cell, seed, metrics, correct, fingerprint=fingerprint, variant=variant)


def _agreement(store):
    runs = store.list_runs()
    return variant_agreement(load_registry(), runs, store.final_metrics([r.id for r in runs]), test_records(store),
                             n_resamples=500)


@pytest.fixture()
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def test_scope_pairs_match_scopes_that_differ_only_in_the_variant():
    p = ScopeKey("synthetic", "vgg16", "quick", "paper", "fp")
    r = ScopeKey("synthetic", "vgg16", "quick", "reference", "fp")
    other_data = ScopeKey("synthetic", "vgg16", "quick", "reference", "fp2")
    other_profile = ScopeKey("synthetic", "vgg16", "smoke", "paper", "fp")
    assert scope_pairs([r, other_data, p, other_profile]) == [(p, r)]
    assert scope_pairs([p, other_profile]) == []


def test_three_seeds_paper_minus_reference_with_t_interval_and_verdicts(store):
    # Base: the paper variant's Top-1 Loc is 10, 11, 9 points above the reference's (mean 10, t interval
    # 10 ± 4.302653 / sqrt(3) = [7.52, 12.48]) and its Top-1 Cls equal on every seed.
    # +ConPool vs Base: +5, +6, +4 in the paper variant (holds), the opposite in the reference (does not hold).
    for seed, (ref_base, gap, pool) in enumerate([(0.40, 0.10, 0.05), (0.41, 0.11, 0.06), (0.42, 0.09, 0.04)]):
        _run(store, f"rb{seed}0000", "reference", "base", seed, {"top1_loc": ref_base, "top1_cls": 0.7})
        _run(store, f"pb{seed}0000", "paper", "base", seed, {"top1_loc": ref_base + gap, "top1_cls": 0.7})
        _run(store, f"rc{seed}0000", "reference", "conpool", seed, {"top1_loc": ref_base - pool, "top1_cls": 0.7})
        _run(store, f"pc{seed}0000", "paper", "conpool", seed, {"top1_loc": ref_base + gap + pool, "top1_cls": 0.7})
    agreement = _agreement(store)
    loc = next(d for d in agreement.deltas if d.cell == "base" and d.metric == "top1_loc")
    assert loc.scope.endswith("variant paper vs reference")
    assert loc.paper_value == pytest.approx(51.0) and loc.reference_value == pytest.approx(41.0)
    assert loc.delta == pytest.approx(10.0) and loc.n_seeds == 3 and loc.interval == "seeds (t)"
    assert loc.ci_lo == pytest.approx(10 - 4.302653 / 3 ** 0.5, abs=1e-3) and loc.status == "differ"
    cls = next(d for d in agreement.deltas if d.cell == "base" and d.metric == "top1_cls")
    assert cls.delta == pytest.approx(0.0) and cls.status == "no interval"  # identical on every seed
    # only cells some variant ran are listed: Table 3's +KD never ran
    assert {d.cell for d in agreement.deltas} == {"base", "conpool"}
    verdict = next(v for v in agreement.verdicts if v.claim == "conpool-improves-loc" and v.metric == "top1_loc")
    # both intervals exclude the paper's Δ (+0.9): above it in the paper variant, below it in the reference
    assert (verdict.paper.status, verdict.reference.status, verdict.agree) == (
        "holds, larger than the paper's", "does not hold, smaller than the paper's", False)
    assert verdict.paper.ours_delta == pytest.approx(5.0) and verdict.reference.ours_delta == pytest.approx(-5.0)
    kd = next(v for v in agreement.verdicts if v.claim == "kd-improves-cls-and-loc")
    assert kd.agree is None  # neither variant ran +KD


def test_one_seed_shows_the_per_image_interval_but_no_verdict(store):
    # 100 images: the reference right on 0-29, the paper variant on 0-29 and 30-69 -> +40 points
    _run(store, "rb000000", "reference", "base", 0, {"top1_loc": 0.30}, [i < 30 for i in range(100)])
    _run(store, "pb000000", "paper", "base", 0, {"top1_loc": 0.70}, [i < 70 for i in range(100)])
    d = next(d for d in _agreement(store).deltas if d.metric == "top1_loc")
    assert (d.interval, d.n_seeds, d.status, d.ci_lo) == ("1 seed", 1, "inconclusive (1 seed)", None)
    # per-image differences: 1 on 40 images, 0 on 60: sd 0.49, se 0.049 -> about [30.4, 49.6]
    assert 28 < d.image_ci_lo < 33 and 47 < d.image_ci_hi < 52


def test_nothing_to_compare_without_both_variants_of_a_scope(store):
    _run(store, "rb000000", "reference", "base", 0, {"top1_loc": 0.30})
    _run(store, "pb000000", "paper", "base", 0, {"top1_loc": 0.30}, fingerprint="other-data")
    agreement = _agreement(store)
    assert not agreement and agreement.to_dict() == {"deltas": [], "verdicts": []}


def test_the_values_shown_are_over_the_seeds_the_difference_pairs(store):
    # the reference ran seeds 0-2 (30, 40, 50), the paper variant seed 0 only (35): Δ +5 on seed 0, and the
    # values beside it are seed 0's (35 and 30), not the reference's mean over three seeds (40)
    for seed, value in enumerate((0.30, 0.40, 0.50)):
        _run(store, f"rb{seed}00000", "reference", "base", seed, {"top1_loc": value})
    _run(store, "pb000000", "paper", "base", 0, {"top1_loc": 0.35})
    d = next(d for d in _agreement(store).deltas if d.cell == "base" and d.metric == "top1_loc")
    assert (d.paper_value, d.reference_value, d.delta, d.n_seeds) == (pytest.approx(35.0), pytest.approx(30.0),
                                                                      pytest.approx(5.0), 1)
    # and each claim is judged under both variants on that seed alone (the same evidence)
    _run(store, "rc000000", "reference", "conpool", 0, {"top1_loc": 0.31})
    _run(store, "rc100000", "reference", "conpool", 1, {"top1_loc": 0.41})
    _run(store, "pc000000", "paper", "conpool", 0, {"top1_loc": 0.36})
    v = next(v for v in _agreement(store).verdicts if v.claim == "conpool-improves-loc" and v.metric == "top1_loc")
    assert (v.paper.n_seeds, v.reference.n_seeds) == (1, 1)


def test_a_cell_only_one_variant_ran_is_listed_without_a_difference(store):
    _run(store, "rb000000", "reference", "base", 0, {"top1_loc": 0.30})
    _run(store, "pb000000", "paper", "base", 0, {"top1_loc": 0.35})
    _run(store, "rc000000", "reference", "conpool", 0, {"top1_loc": 0.40})
    d = next(d for d in _agreement(store).deltas if d.cell == "conpool" and d.metric == "top1_loc")
    assert d.paper_value is None and d.reference_value == pytest.approx(40.0)
    assert d.delta is None and d.status == "not run"


def _cli(capsys, *args) -> tuple[int, str, str]:
    from kdcicam.cli import main

    try:
        main(["claims", "--variants", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_variants_json_markdown_and_nothing_to_compare(tmp_path, capsys):
    import json

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with open_store(url) as s:
        _run(s, "rb000000", "reference", "base", 0, {"top1_loc": 0.30}, [i < 30 for i in range(100)])
    code, out, _ = _cli(capsys, "--db", url)
    assert code == 0 and "no scope has finished runs of both variants" in out
    with open_store(url) as s:
        _run(s, "pb000000", "paper", "base", 0, {"top1_loc": 0.70}, [i < 70 for i in range(100)])
    code, out, _ = _cli(capsys, "--db", url, "--json")
    assert code == 0, out
    delta = next(d for d in json.loads(out)["deltas"] if d["metric"] == "top1_loc")
    assert delta["delta"] == pytest.approx(40.0) and delta["status"] == "inconclusive (1 seed)"
    code, out, _ = _cli(capsys, "--db", url, "--md")
    assert code == 0 and "| table3 | Base | top1_loc | 70.0 | 30.0 | +40.0 |" in out
    code, out, err = _cli(capsys, "--db", url, "--threshold-policy", "best")
    assert code == 2 and err.count("\n") == 1 and "--threshold-policy 'best'" in err


def test_report_shows_the_variant_comparison_in_every_format(store):
    from kdcicam.report import build_report, render, report_json

    reg = load_registry()
    _run(store, "rb000000", "reference", "base", 0, {"top1_loc": 0.30}, [i < 30 for i in range(100)])
    assert not build_report(store, reg, table_keys=["table3"]).variants  # one variant: no section
    md = render(build_report(store, reg, table_keys=["table3"]), reg, "md", figures=False).text
    assert "Method variants" not in md
    _run(store, "pb000000", "paper", "base", 0, {"top1_loc": 0.70}, [i < 70 for i in range(100)])
    _run(store, "rc000000", "reference", "conpool", 0, {"top1_loc": 0.35}, [i < 35 for i in range(100)])
    _run(store, "pc000000", "paper", "conpool", 0, {"top1_loc": 0.65}, [i < 65 for i in range(100)])
    data = build_report(store, reg, table_keys=["table3"])
    assert set(data.variants) == {"paper"}  # the store holds paper-protocol numbers only
    md = render(data, reg, "md", figures=False).text
    assert "## Method variants: paper vs reference" in md
    assert "| table3 | Base | Top-1 Loc | 70.0 | 30.0 | +40.0 |" in md
    # +ConPool - Base: +5 under the reference variant, -5 under the paper one: one seed, no verdict under either
    assert ("| The causal context pool improves localization over Base | Top-1 Loc | inconclusive (1 seed) (−5.0, "
            "n = 1) | inconclusive (1 seed) (+5.0, n = 1) | ✓ |") in md
    html = render(data, reg, "html", figures=False).text
    assert 'id="variants"' in html and 'id="variants-paper-1"' in html and "no difference detected" not in html
    assert '<a href="#variants">' in html  # in the contents, beside each scope
    tex = render(data, reg, "latex", figures=False).text
    assert "tab:variants-paper-1" in tex and tex.count("\\begin{table}") == tex.count("\\end{table}")
    js = report_json(data)["variants"]["paper"]
    assert {(d["cell"], d["metric"], d["status"]) for d in js["deltas"]} >= {("base", "top1_loc",
                                                                              "inconclusive (1 seed)")}
    verdicts = {v["metric"]: v["agree"] for v in js["verdicts"] if v["claim"] == "conpool-improves-loc"}
    assert verdicts == {"top1_loc": True, "gt_known_loc": None}  # no GT-known numbers stored: not run
