"""The seed rule (`kdcicam claims --seed-plan`) on constructed stores whose spreads are known."""

from __future__ import annotations

import json
import math

import pytest
from _stored import add_finished_run
from scipy import stats

from kdcicam.analysis.claim_result import ClaimResult
from kdcicam.analysis.results import ScopeKey
from kdcicam.analysis.seed_plan import seed_plan
from kdcicam.cli import main
from kdcicam.store import open_store


def _power_seeds(effect: float) -> int:
    """Fewest n for which a two-sided one-sample t test at 5 % has 80 % power at ``effect`` (= Δ / sd),
    by the noncentral t distribution, counted up from 2."""
    n = 2
    while True:
        df, nc = n - 1, effect * math.sqrt(n)
        crit = stats.t.ppf(0.975, df)
        if 1 - stats.nct.cdf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= 0.8:
            return n
        n += 1


@pytest.fixture()
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def _pilot(store, loc_diffs, gt_diffs, seeds=range(3), variant="reference"):
    for seed, loc, gt in zip(seeds, loc_diffs, gt_diffs):
        tag = f"{variant[:3]}{seed}"
        add_finished_run(store, f"base{tag}", "table3", "base", seed, {"top1_loc": 0.40, "gt_known_loc": 0.60},
                         variant=variant)
        add_finished_run(store, f"pool{tag}", "table3", "conpool", seed,
                         {"top1_loc": 0.40 + loc / 100, "gt_known_loc": 0.60 + gt / 100}, variant=variant)


def _plan(store, capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        main(["claims", "--db", store.url, "--seed-plan", "--json", *args])
    assert exit_.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_a_table_gets_the_seeds_its_rows_need_and_under_powered_rows_ask_for_nothing(store, capsys):
    # Top-1 Loc differences +0.5, +1.5, +1.0 points: sd 0.5, the paper's Δ +0.9 -> effect 1.8. GT-known +5, -5, +1:
    # sd 5.03 against the paper's +0.6 -> hundreds of seeds: under-powered, no ask.
    _pilot(store, [0.5, 1.5, 1.0], [5.0, -5.0, 1.0])
    needed = _power_seeds(0.9 / 0.5)
    assert 3 < needed <= 8  # the construction puts the Top-1 Loc row inside the rule
    plan = _plan(store, capsys)
    (table,) = plan["tables"]
    assert (table["table"], table["seeds_run"], table["seeds"]) == ("table3", 3, needed)
    assert [(a["metric"], a["seeds_needed"]) for a in table["asks"]] == [("top1_loc", needed)]
    assert table["command"] == (f"kdcicam ablate table3 --dataset synthetic --backbone vgg16 --profile quick "
                                f"--seeds {needed}")
    (under,) = plan["underpowered"]
    assert under["metric"] == "gt_known_loc" and under["seeds_needed"] > 8
    assert plan["max_seeds"] == 8 and "at most 8 seeds needed" in plan["rule"]


def test_seeds_beyond_the_pilot_do_not_move_the_plan(store, capsys):
    _pilot(store, [0.5, 1.5, 1.0], [5.0, -5.0, 1.0])
    before = _plan(store, capsys)
    _pilot(store, [30.0, -30.0], [0.0, 0.0], seeds=(3, 4))  # added seeds with a wild spread
    assert _plan(store, capsys) == before
    # read over five seeds instead, the plan changes (the spread is no longer the pilot's)
    assert _plan(store, capsys, "--pilot-seeds", "5")["tables"] != before["tables"]


def test_a_cap_below_the_need_leaves_the_table_at_its_seeds(store, capsys):
    _pilot(store, [0.5, 1.5, 1.0], [5.0, -5.0, 1.0])
    needed = _power_seeds(0.9 / 0.5)
    plan = _plan(store, capsys, "--max-seeds", str(needed - 1))
    (table,) = plan["tables"]
    assert (table["seeds"], table["command"], table["asks"]) == (3, None, [])
    assert {u["metric"] for u in plan["underpowered"]} == {"top1_loc", "gt_known_loc"}


def test_each_variant_is_planned_in_its_own_scope(store, capsys):
    _pilot(store, [0.5, 1.5, 1.0], [5.0, -5.0, 1.0])
    _pilot(store, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], variant="paper")  # no spread: no seeds needed
    tables = {t["variant"]: t for t in _plan(store, capsys)["tables"]}
    assert tables["reference"]["command"].endswith(f"--seeds {_power_seeds(1.8)}")
    assert "--variant" not in tables["reference"]["command"]
    assert tables["paper"]["seeds"] == 3 and tables["paper"]["command"] is None


def test_the_plan_is_printed_with_its_rule_and_commands(store, capsys):
    _pilot(store, [0.5, 1.5, 1.0], [5.0, -5.0, 1.0])
    with pytest.raises(SystemExit):
        main(["claims", "--db", store.url, "--seed-plan"])
    out = capsys.readouterr().out
    assert "Seed rule (θ fixed): every claim with at most 8 seeds needed" in out
    assert f"kdcicam ablate table3 --dataset synthetic --backbone vgg16 --profile quick --seeds {_power_seeds(1.8)}" in out
    assert "Under-powered" in out and "gt_known_loc" in out


def test_an_incomplete_pilot_is_said_and_the_table_counts_its_fewest_seeds(store, capsys):
    _pilot(store, [0.5, 1.5, 1.0], [5.0, -5.0, 1.0], seeds=range(2))
    (table,) = _plan(store, capsys)["tables"]
    assert table["seeds_run"] == 2
    with pytest.raises(SystemExit):
        main(["claims", "--db", store.url, "--seed-plan"])
    assert "The pilot is incomplete" in capsys.readouterr().out


def test_no_store_yet_gives_the_empty_plan_as_json(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["claims", "--db", str(tmp_path / "none.db"), "--seed-plan", "--json"])
    assert exit_.value.code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["tables"] == [] and plan["underpowered"] == [] and plan["pilot_seeds"] == 3
    assert not (tmp_path / "none.db").exists()  # reading a plan creates no store


@pytest.mark.parametrize(("args", "message"), [
    (["--pilot-seeds", "1"], "at least 2"),
    (["--max-seeds", "2"], "must be at least --pilot-seeds"),
    (["--variants"], "name one"),
])
def test_bad_plan_options_get_one_line(store, capsys, args, message):
    _pilot(store, [0.5, 1.5, 1.0], [5.0, -5.0, 1.0])
    with pytest.raises(SystemExit) as exit_:
        main(["claims", "--db", store.url, "--seed-plan", *args])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def _row(**kw) -> ClaimResult:
    base = dict(table="table4", claim="c", text="t", scope="S", protocol="paper", variant="reference",
                selection="last / last", select_on="val", threshold_policy="val", metric="top1_loc",
                paper_delta=1.0, ours_delta=0.5, ci_lo=-1.0, ci_hi=2.0, n_seeds=3, interval="seeds (t)",
                status="inconclusive")
    return ClaimResult(**{**base, **kw})


def test_the_rule_by_hand_over_both_protocols():
    scope = ScopeKey("synthetic", "vgg16", "medium", "reference")
    rows = [_row(seeds_needed=5), _row(protocol="standard", seeds_needed=7), _row(metric="gt_known_loc", seeds_needed=9),
            _row(claim="d", metric="pxap", paper_delta=None, seeds_needed=None),
            _row(table="figure1b", seeds_needed=None)]
    plan = seed_plan(rows, {"S": scope}, pilot_seeds=3, max_seeds=8)
    by_table = {t.table: t for t in plan.tables}
    assert by_table["table4"].seeds == 7  # the most any row asks, under either protocol
    assert by_table["table4"].command == "kdcicam ablate table4 --dataset synthetic --backbone vgg16 --profile medium --seeds 7"
    assert by_table["figure1b"].seeds == 3 and by_table["figure1b"].command is None
    assert [(s, a.metric, a.seeds_needed) for s, a in plan.underpowered] == [("S", "gt_known_loc", 9)]
