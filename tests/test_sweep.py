"""Sweep tables (registry kind = "sweep"): reading, planning, and the report's values, gaps and figure."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from _stored import add_finished_run
from test_registry import _plan

from kdcicam.core.errors import ConfigError
from kdcicam.registry.ablations import DEFAULT_REGISTRY, load_registry
from kdcicam.report import build_report, render, report_json
from kdcicam.store import open_store

SWEEP = "context-sweep"
KEY = "data.synth.context_correlation"


def test_the_shipped_sweep_plans_every_value_and_shares_table3s_runs_at_the_default():
    reg = load_registry()
    table = reg.table(SWEEP)
    assert table.kind == "sweep" and table.sweep_key == KEY and table.sweep_values == (0.5, 0.7, 0.9, 0.98)
    plan = _plan(reg, [SWEEP], seeds=(0, 1))
    assert len(plan.runs) == 4 * 2 * 2  # values x cells x seeds
    assert sorted({r.cfg.data.synth.context_correlation for r in plan.runs}) == [0.5, 0.7, 0.9, 0.98]
    points = {c.point for c in plan.cells}
    assert points == {f"{KEY}={v:g}" for v in (0.5, 0.7, 0.9, 0.98)}
    # at the profile's own correlation the sweep's cells are Table 3's Base and +ConPool runs
    t3_plan = _plan(reg, ["table3"])
    t3 = {c.cell: c.run_id for c in t3_plan.cells}
    (own,) = {r.cfg.data.synth.context_correlation for r in t3_plan.runs}
    assert own in (0.5, 0.7, 0.9, 0.98)
    at_default = {c.cell: c.run_id for c in plan.cells if c.point == f"{KEY}={own:g}" and c.seed == 0}
    assert at_default == {"base": t3["base"], "conpool": t3["conpool"]}


def _registry_with(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "ablations"
    shutil.copytree(DEFAULT_REGISTRY, root)
    (root / "mine.toml").write_text(text)
    return root


CELLS = '''
[[cells]]
key = "base"
name = "Base"
role = "student"
context_pool = false
'''


@pytest.mark.parametrize("head, expected", [
    ('kind = "sweep"\nreference_cell = "base"\n', "mine.toml: sweep: expected a table"),
    ('kind = "sweep"\nreference_cell = "base"\nsweep = { key = "data.synth.corr", values = [0.5] }\n',
     "mine.toml: sweep.key: "),
    ('kind = "sweep"\nreference_cell = "base"\nsweep = { key = "data.synth.context_correlation", values = [0.5, 1.5] }\n',
     "mine.toml: sweep.values: "),
    ('kind = "sweep"\nreference_cell = "base"\nsweep = { key = "data.synth.context_correlation", values = [] }\n',
     "expected a non-empty list of numbers"),
    ('kind = "sweep"\nsweep = { key = "data.synth.context_correlation", values = [0.5] }\n',
     "a sweep needs reference_cell"),
    ('sweep = { key = "data.synth.context_correlation", values = [0.5] }\n', "'sweep' is only for kind"),
    ('kind = "curve"\n', "kind = 'curve': must be one of 'table', 'scatter', 'sweep'"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, head, expected):
    root = _registry_with(tmp_path, 'title = "t"\n' + head + CELLS)
    with pytest.raises(ConfigError, match=None) as err:
        load_registry(root)
    assert expected in str(err.value)


# ------------------------------------------------------------------------------------ report
# Top-1 Loc (fractions) per (correlation, cell, seed):
#   0.5: Base 0.40, 0.44 | +ConPool 0.45, 0.47  -> gaps +5, +3: mean +4.0, std 1.41,
#        95 % t-interval 4 ± 12.706 * 1.414 / sqrt(2) = 4 ± 12.7 -> [-8.7, +16.7]
#   0.9: Base 0.50 (seed 0 only), no +ConPool   -> "0.9: +ConPool" not run
VALUES = {(0.5, "base"): (0.40, 0.44), (0.5, "conpool"): (0.45, 0.47), (0.9, "base"): (0.50,)}


def _sweep_store(url: str, values: dict | None = None) -> None:
    with open_store(url) as store:
        for (corr, cell), per_seed in (values or VALUES).items():
            for seed, loc in enumerate(per_seed):
                add_finished_run(store, f"{cell}-{corr}-{seed}", SWEEP, cell, seed,
                                 {"top1_cls": 0.7, "top1_loc": loc, "gt_known_loc": loc + 0.1}, fingerprint=f"fp{corr}",
                                 config={"model": {"context_pool": cell != "base"},
                                         "data": {"dataset": "synthetic", "synth": {"context_correlation": corr}}})


def test_report_sweep_values_gaps_missing_and_figure(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _sweep_store(url)
    reg = load_registry()
    with open_store(url) as store:
        data = build_report(store, reg, protocols=("paper",))
    assert data.scopes == ()  # sweep-only runs make no scope of the paper's tables
    (sweep,) = data.sweeps
    assert sweep.group == "synthetic / vgg16 / quick / reference" and sweep.reduced
    value = {(p.x, p.cell): p for p in sweep.values if p.metric == "top1_loc"}
    assert value[(0.5, "base")].mean == pytest.approx(42.0) and value[(0.5, "base")].n == 2
    assert value[(0.9, "conpool")].n == 0 and value[(0.9, "conpool")].mean is None
    gap = next(p for p in sweep.gaps if p.x == 0.5 and p.metric == "top1_loc")
    assert (gap.mean, gap.std, gap.n) == (pytest.approx(4.0), pytest.approx(math.sqrt(2)), 2)
    assert gap.ci == (pytest.approx(4 - 12.7062, abs=1e-3), pytest.approx(4 + 12.7062, abs=1e-3))
    assert "0.9: +ConPool" in sweep.missing and "0.7: Base" in sweep.missing
    md = render(data, reg, "md", figures=True)
    assert "| 0.5 | +ConPool − Base | 2 | 0.0 | +4.0 \\[−8.7, +16.7\\] |" in md.text
    assert "| 0.5 | Base | 2 | 70.0 ± 0.0 | 42.0 ± 2.8 |" in md.text
    assert "No runs yet" not in md.text and "## Sweeps" in md.text
    assert any(name.startswith("sweep-context-sweep-") for name in md.files)
    assert json.loads(json.dumps(report_json(data)))["sweeps"][0]["x"] == KEY
    for fmt in ("html", "latex"):
        assert "Confounding sweep" in render(data, reg, fmt, figures=False).text


# Gaps at two correlations: 0.5: +5, +3; 0.9: +10, +6 (points). Least squares through the four (x, gap):
# x mean 0.7, gap mean 6, Sxx 4 x 0.2^2 = 0.16, Sxy 0.2 + 0.6 + 0.8 + 0 = 1.6 -> slope 10 per unit, a change
# of +4.0 from 0.5 to 0.9; residuals 1, -1, 2, -2 -> s^2 = 10 / 2 = 5, se 5 / 0.16 -> sqrt = 5.590,
# t(0.975, 2) 4.3027 -> slope 10 ± 24.05 -> change 4.0 ± 9.62 = [-5.62, +13.62].
TREND = {(0.5, "base"): (0.40, 0.44), (0.5, "conpool"): (0.45, 0.47),
         (0.9, "base"): (0.50, 0.52), (0.9, "conpool"): (0.60, 0.58)}


def test_sweep_trend_of_the_gap_by_hand(tmp_path):
    from kdcicam.analysis.stats import linear_trend

    slope, n, lo, hi = linear_trend([0, 0, 1, 1], [0, 2, 1, 3])
    # slope 1; residuals -1, 1, -1, 1 -> s^2 = 4 / 2, Sxx 1 -> se sqrt(2); t(0.975, 2) 4.3027 -> 1 ± 6.085
    assert (slope, n) == (pytest.approx(1.0), 4) and (lo, hi) == (pytest.approx(-5.085, abs=1e-3), pytest.approx(7.085, abs=1e-3))
    assert math.isnan(linear_trend([1, 1, 1], [1, 2, 3])[0]) and math.isnan(linear_trend([0, 1], [0, 1])[2])
    url = f"sqlite:///{tmp_path / 'r.db'}"
    _sweep_store(url, TREND)
    reg = load_registry()
    with open_store(url) as store:
        data = build_report(store, reg, protocols=("paper",))
    (sweep,) = data.sweeps
    trend = next(t for t in sweep.trends if t.metric == "top1_loc")
    assert (trend.cell, trend.n, trend.x_lo, trend.x_hi) == ("conpool", 4, 0.5, 0.9)
    assert trend.change == pytest.approx(4.0)
    assert trend.ci == (pytest.approx(4 - 9.620, abs=1e-2), pytest.approx(4 + 9.620, abs=1e-2))
    md = render(data, reg, "md", figures=False).text
    assert "- +ConPool − Base, Top-1 Loc: +4.0 from 0.5 to 0.9 [−5.6, +13.6], n = 4" in md
    assert "from 0.5 to 0.9" in render(data, reg, "html", figures=False).text
    trends = {t["metric"]: t for t in report_json(data)["sweeps"][0]["trends"]}
    assert trends["top1_loc"]["change"] == pytest.approx(4.0) and trends["top1_cls"]["change"] == pytest.approx(0.0)
    tex = render(data, reg, "latex", figures=False).text
    assert "from 0.5 to 0.9" in tex and tex.count("{") - tex.count("\\{") == tex.count("}") - tex.count("\\}")
