"""``kdcicam compare A B``: is the difference between two runs more than noise?

Both runs are read from the store at one (protocol, checkpoint selection, threshold policy, test
split) each: the config keys that differ, every final metric side by side, and for each per-image
correctness flag a paired test on the images both runs were scored on (McNemar's exact test and a
paired bootstrap interval of the accuracy difference). Runs evaluated on different test sets are
refused.

One rule gives each metric's verdict (:func:`kdcicam.analysis.verdicts.paired_verdict`): "A better"
/ "B better" when McNemar's p, Holm-adjusted over the metrics compared, is below 5 % and the
bootstrap interval excludes zero on the same side; "tests disagree: no verdict" when only one of
the two excludes zero. It is a verdict on these two runs on this test set: one seed each, so the
training's noise is not in it (``kdcicam claims`` judges cells over seeds).

A verdict ("A better", ...) is given only when the two numbers were produced the same way: the
same evaluation protocol, variant, threshold policy (fixed / val / oracle θ) and selection policy
(``eval.select_on``). Otherwise the numbers are printed with "no verdict: the runs differ in ...",
naming each differing field and its two values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from kdcicam.analysis.stats import mcnemar_exact, paired_bootstrap_ci
from kdcicam.analysis.verdicts import holm, paired_verdict
from kdcicam.core.errors import DataError, RunError, StoreError
from kdcicam.core.identity import with_defaults
from kdcicam.evaluation.mechanism import MECHANISM_METRICS
from kdcicam.evaluation.selection import select_on_of
from kdcicam.registry.definitions import METRICS
from kdcicam.store import RunInfo, Store

# per-image record column -> the metric it is the per-image form of
PER_IMAGE = {
    "correct_top1_cls": "top1_cls", "correct_top5_cls": "top5_cls", "correct_top1_loc": "top1_loc",
    "correct_top5_loc": "top5_loc", "correct_gt_known": "gt_known_loc",
}
# Fields whose difference means the two numbers were not produced the same way: warned about.
_PROTOCOL_FIELDS = ("variant", "profile")
_PROTOCOL_PREFIX = "eval."
_THRESHOLD_POLICY = "fixed"
_SPLIT = "test"
ALPHA = 0.05
NO_VERDICT = "no verdict"


@dataclass(frozen=True)
class PairedTest:
    metric: str  # e.g. "top1_loc"
    n_images: int
    acc_a: float  # percent
    acc_b: float
    b01: int  # images A got wrong and B right
    b10: int  # images A got right and B wrong
    p_value: float  # McNemar exact, two-sided, uncorrected
    delta: float  # acc_a - acc_b, percent
    ci_lo: float  # paired bootstrap 95% interval of delta, percent
    ci_hi: float
    verdict: str
    p_holm: float | None = None  # p_value Holm-adjusted over the metrics compared


@dataclass(frozen=True)
class Comparison:
    a: RunInfo
    b: RunInfo
    name_a: str
    name_b: str
    protocol: str
    selection: str
    config_diff: list[tuple[str, Any, Any]]  # (dotted key, A's value, B's value)
    metrics: list[tuple[str, float | None, float | None, float | None]]  # (name, A %, B %, A-B)
    tests: list[PairedTest]
    n_resamples: int
    other: list[tuple[str, float | None, float | None]] = field(default_factory=list)  # e.g. θ, as stored
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    threshold_policy: str = _THRESHOLD_POLICY  # A's (and, unless threshold_policy_b differs, B's)
    protocol_b: str | None = None  # B's protocol when it differs from A's
    threshold_policy_b: str | None = None  # B's threshold policy when it differs from A's
    mismatch: list[str] = field(default_factory=list)  # "variant (reference vs paper)": why no verdict
    # synthetic benchmark: the mechanism measures (standard protocol), (name, A %, B %, A-B)
    mechanism: list[tuple[str, float | None, float | None, float | None]] = field(default_factory=list)

    @property
    def verdict_withheld(self) -> str | None:
        """"no verdict: the runs differ in ..." when the numbers were produced differently, else None."""
        if not self.mismatch:
            return None
        hint = ("; for the variants' difference over seeds: kdcicam claims --variants"
                if len(self.mismatch) == 1 and self.mismatch[0].startswith("variant") else "")
        return f"{NO_VERDICT}: the runs differ in {', '.join(self.mismatch)}{hint}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (percent; NaN as null)."""
        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and math.isnan(x) else x

        def run(info: RunInfo, name: str) -> dict[str, Any]:
            return {"name": name, "id": info.id, "role": info.role, "profile": info.profile,
                    "variant": info.variant, "dataset": info.dataset,
                    "dataset_fingerprint": info.dataset_fingerprint, "seed": info.seed, "labels": info.labels}

        return {
            "a": run(self.a, self.name_a), "b": run(self.b, self.name_b), "protocol": self.protocol,
            "selection": self.selection, "threshold_policy": self.threshold_policy, "split": _SPLIT,
            "protocol_b": self.protocol_b or self.protocol,
            "threshold_policy_b": self.threshold_policy_b or self.threshold_policy,
            "select_on": {"a": select_on_of(self.a.config), "b": select_on_of(self.b.config)},
            "verdict_withheld": self.verdict_withheld, "unit": "percent",
            "config_diff": [{"key": k, "a": va, "b": vb} for k, va, vb in self.config_diff],
            "metrics": [{"name": n, "a": clean(va), "b": clean(vb), "delta": clean(d)}
                        for n, va, vb, d in self.metrics],
            "other_values": [{"name": n, "a": clean(va), "b": clean(vb)} for n, va, vb in self.other],
            "mechanism": [{"name": n, "a": clean(va), "b": clean(vb), "delta": clean(d)}
                          for n, va, vb, d in self.mechanism],
            "paired_tests": [{k: clean(v) for k, v in asdict(t).items()} for t in self.tests],
            "bootstrap_resamples": self.n_resamples, "warnings": self.warnings, "notes": self.notes,
        }


# ----------------------------------------------------------------------------------- naming

def resolve_name(store: Store, name: str) -> RunInfo:
    """A run named by id, id prefix, or ``table/cell[@seed]`` (through the runs' labels).

    Raises:
        StoreError: nothing matches, or the name is ambiguous (the message lists the choices).
    """
    name = name.strip()
    if "/" not in name:
        return store.resolve_run(name)
    table, rest = name.split("/", 1)
    cell, seed_text = rest.rsplit("@", 1) if "@" in rest else (rest, None)
    runs = store.list_runs(labels_contain=(table, cell))
    if not runs:
        raise StoreError(f"no run is labelled {table}/{cell} (see `kdcicam runs list`)")
    if seed_text is not None:
        try:
            seed = int(seed_text)
        except ValueError:
            raise StoreError(f"'{name}': the seed after '@' must be an integer, got {seed_text!r}") from None
        seeds = sorted({r.seed for r in runs})
        runs = [r for r in runs if r.seed == seed]
        if not runs:
            raise StoreError(f"no run of {table}/{cell} has seed {seed} "
                             f"(seeds: {', '.join(map(str, seeds))})")
    finished = [r for r in runs if r.status == "finished"]
    runs = finished or runs
    seeds = sorted({r.seed for r in runs})
    if len(seeds) > 1:
        raise StoreError(f"'{name}' is ambiguous: {table}/{cell} has seeds {', '.join(map(str, seeds))}; "
                         f"name one, e.g. {table}/{cell}@{seeds[0]}")
    if len(runs) > 1:
        shown = ", ".join(f"{r.short_id} ({r.dataset}/{r.profile}/{r.variant})" for r in runs[:6])
        raise StoreError(f"'{name}' matches {len(runs)} runs ({shown}); name one by its id")
    return runs[0]


# -------------------------------------------------------------------------------- comparing

def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


_MISSING = "<absent>"


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The dotted keys whose values differ (a key only one side has shows "<absent>" on the other)."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa.get(k, _MISSING), fb.get(k, _MISSING)) for k in sorted(fa.keys() | fb.keys())
            if fa.get(k, _MISSING) != fb.get(k, _MISSING)]


def _finals(store: Store, run: RunInfo, protocol: str, selection: str,
            threshold_policy: str = _THRESHOLD_POLICY) -> dict[str, float]:
    frame = store.final_metrics([run.id])
    here = frame[(frame["protocol"] == protocol) & (frame["selection"] == selection)
                 & (frame["threshold_policy"] == threshold_policy) & (frame["split"] == _SPLIT)]
    if here.empty:
        have = sorted({f"{p}/{s}" for p, s in zip(frame["protocol"], frame["selection"])})
        policy = "" if threshold_policy == _THRESHOLD_POLICY else f", threshold policy {threshold_policy}"
        raise RunError(f"run {run.short_id} has no final metrics for protocol {protocol}, selection "
                       f"{selection}{policy} (evaluated: {', '.join(have) or 'nothing yet'})")
    return {n: float(v) for n, v in zip(here["name"], here["value"])}


def mismatches(a: RunInfo, b: RunInfo, protocol: str, protocol_b: str, threshold_policy: str,
               threshold_policy_b: str) -> list[str]:
    """Which of protocol, variant, threshold policy and selection policy differ, with both values."""
    pairs = [("protocol", protocol, protocol_b), ("variant", a.variant, b.variant),
             ("threshold policy", threshold_policy, threshold_policy_b),
             ("eval.select_on", select_on_of(a.config), select_on_of(b.config))]
    return [f"{name} ({va} vs {vb})" for name, va, vb in pairs if va != vb]


def _check_same_test_set(a: RunInfo, b: RunInfo, ra: pd.DataFrame, rb: pd.DataFrame) -> None:
    if a.dataset_fingerprint and b.dataset_fingerprint and a.dataset_fingerprint != b.dataset_fingerprint:
        raise DataError(f"refusing to compare {a.short_id} and {b.short_id}: different test sets (dataset "
                        f"fingerprints {a.dataset_fingerprint[:12]} vs {b.dataset_fingerprint[:12]})")
    if a.dataset != b.dataset:
        raise DataError(f"refusing to compare {a.short_id} and {b.short_id}: different datasets "
                        f"({a.dataset} vs {b.dataset})")
    if not ra.empty and not rb.empty:
        ids_a, ids_b = set(ra["image_id"]), set(rb["image_id"])
        if ids_a != ids_b:
            raise DataError(f"refusing to compare {a.short_id} and {b.short_id}: their test images differ "
                            f"({len(ids_a - ids_b)} only in A, {len(ids_b - ids_a)} only in B)")


def paired_tests(ra: pd.DataFrame, rb: pd.DataFrame, n_resamples: int, seed: int) -> list[PairedTest]:
    """McNemar + paired bootstrap for each per-image correctness flag, images joined on image_id; the
    verdict from both (:func:`~kdcicam.analysis.verdicts.paired_verdict`, Holm over the flags)."""
    both = ra.merge(rb, on="image_id", suffixes=("_a", "_b"))
    tests = []
    for column, metric in PER_IMAGE.items():
        a = both[f"{column}_a"].to_numpy(bool)  # (N,)
        b = both[f"{column}_b"].to_numpy(bool)  # (N,)
        b01, b10, p = mcnemar_exact(a, b)
        delta, lo, hi = paired_bootstrap_ci(a, b, n_resamples=n_resamples, seed=seed)
        tests.append(PairedTest(metric=metric, n_images=len(a), acc_a=100.0 * a.mean(), acc_b=100.0 * b.mean(),
                                b01=b01, b10=b10, p_value=p, delta=100.0 * delta, ci_lo=100.0 * lo,
                                ci_hi=100.0 * hi, verdict=""))
    adjusted = holm([t.p_value for t in tests])
    return [dataclasses.replace(t, p_holm=p, verdict=paired_verdict(t.delta, p, t.ci_lo, t.ci_hi, ALPHA))
            for t, p in zip(tests, adjusted)]


def compare_runs(store: Store, name_a: str, name_b: str, *, protocol: str = "paper", selection: str = "last",
                 n_resamples: int = 2000, seed: int = 0, threshold_policy: str = _THRESHOLD_POLICY,
                 protocol_b: str | None = None, threshold_policy_b: str | None = None) -> Comparison:
    """Compare two runs of the store.

    Args:
        store: the run store.
        name_a, name_b: run names (id, id prefix, ``table/cell[@seed]``).
        protocol: evaluation protocol of both runs' numbers.
        selection: checkpoint selection of both runs' numbers.
        n_resamples: paired bootstrap resamples.
        seed: bootstrap seed.
        threshold_policy: θ policy of both runs' numbers ("fixed", "val", "oracle").
        protocol_b, threshold_policy_b: B's, when they differ from A's (then there is no verdict).

    Returns:
        The comparison (percent units).

    Raises:
        StoreError: a name is unknown or ambiguous.
        RunError: a run has no final metrics for (protocol, selection).
        DataError: the runs were evaluated on different test sets.
    """
    a, b = resolve_name(store, name_a), resolve_name(store, name_b)
    proto_b, policy_b = protocol_b or protocol, threshold_policy_b or threshold_policy
    ra = store.get_image_records(a.id, protocol, selection, _SPLIT, threshold_policy)
    rb = store.get_image_records(b.id, proto_b, selection, _SPLIT, policy_b)
    _check_same_test_set(a, b, ra, rb)
    fa = _finals(store, a, protocol, selection, threshold_policy)
    fb = _finals(store, b, proto_b, selection, policy_b)
    metrics, other = [], []
    for name in [m for m in METRICS if m in fa or m in fb]:  # accuracies: percent
        va, vb = (None if v is None else 100.0 * v for v in (fa.get(name), fb.get(name)))
        metrics.append((name, va, vb, None if va is None or vb is None else va - vb))
    for name in sorted((fa.keys() | fb.keys()) - set(METRICS) - set(MECHANISM_METRICS)):  # anything else (θ)
        other.append((name, fa.get(name), fb.get(name)))
    mechanism = _mechanism_rows(store, (a, b), selection, (threshold_policy, policy_b))
    diff = config_diff(with_defaults(a.config), with_defaults(b.config))
    warnings = []
    differing = ["protocol"] if proto_b != protocol else []
    differing += [f for f in _PROTOCOL_FIELDS if getattr(a, f) != getattr(b, f)]
    differing += ["threshold policy"] if policy_b != threshold_policy else []
    differing += [k for k, _, _ in diff if k.startswith(_PROTOCOL_PREFIX)]
    if differing:
        warnings.append(f"the runs differ in {', '.join(differing)}: their numbers were not produced the same "
                        "way")
    mismatch = mismatches(a, b, protocol, proto_b, threshold_policy, policy_b)
    notes = []
    if a.id == b.id:
        notes.append("A and B are one run: every difference is zero by construction")
    elif not mismatch:
        notes.append("one run on each side: the verdicts are about these two runs on this test set, not about "
                     "their configurations (for those, over seeds: kdcicam claims)")
    if threshold_policy == "oracle" or policy_b == "oracle":
        notes.append("oracle θ: chosen on the test split itself, an upper bound, not a result to report")
    if ra.empty or rb.empty:
        lacking = ", ".join(r.short_id for r, rec in ((a, ra), (b, rb)) if rec.empty)
        notes.append(f"no per-image records for {lacking} at {protocol}/{selection} (θ {threshold_policy}): "
                     "paired tests skipped")
        tests = []
    else:
        tests = paired_tests(ra, rb, n_resamples, seed)
        if mismatch:
            tests = [dataclasses.replace(t, verdict=NO_VERDICT) for t in tests]
    return Comparison(a=a, b=b, name_a=name_a, name_b=name_b, protocol=protocol, selection=selection,
                      config_diff=diff, metrics=metrics, tests=tests, n_resamples=n_resamples, other=other,
                      warnings=warnings, notes=notes, threshold_policy=threshold_policy,
                      protocol_b=proto_b if proto_b != protocol else None,
                      threshold_policy_b=policy_b if policy_b != threshold_policy else None, mismatch=mismatch,
                      mechanism=mechanism)


def _mechanism_rows(store: Store, runs: tuple[RunInfo, RunInfo], selection: str,
                    policies: tuple[str, str]) -> list[tuple[str, float | None, float | None, float | None]]:
    """The mechanism measures of both runs (standard protocol, percent); empty when neither has them."""
    found = []
    for run, policy in zip(runs, policies):
        try:
            finals = _finals(store, run, "standard", selection, policy)
        except RunError:
            finals = {}
        found.append({k: 100.0 * v for k, v in finals.items() if k in MECHANISM_METRICS and not math.isnan(v)})
    fa, fb = found
    return [(name, fa.get(name), fb.get(name),
             None if name not in fa or name not in fb else fa[name] - fb[name])
            for name in MECHANISM_METRICS if name in fa or name in fb]


# ------------------------------------------------------------------------------- formatting

def _num(x: float | None, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _raw(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.4g}"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def format_comparison(c: Comparison) -> str:
    """The comparison as plain aligned text."""
    def who(tag: str, info: RunInfo, name: str) -> str:
        alias = "" if name in (info.id, info.short_id) or info.id.startswith(name) else f" [{name}]"
        return (f"{tag}: {info.short_id}{alias}  {info.role}, {info.dataset}/"
                f"{info.config.get('model', {}).get('backbone', '?')}, profile {info.profile}, "
                f"variant {info.variant}, seed {info.seed}")

    def how(protocol: str, policy: str, run: RunInfo) -> str:
        return f"protocol {protocol}, selection {c.selection} (selected on {select_on_of(run.config)}), θ {policy}"

    evaluation = how(c.protocol, c.threshold_policy, c.a)
    of_b = how(c.protocol_b or c.protocol, c.threshold_policy_b or c.threshold_policy, c.b)
    if of_b != evaluation:
        evaluation = f"A: {evaluation}; B: {of_b}"
    lines = [who("A", c.a, c.name_a), who("B", c.b, c.name_b), f"evaluation: {evaluation}, {_SPLIT} split", ""]
    if c.config_diff:
        width = max(len(k) for k, _, _ in c.config_diff)
        lines.append(f"config differences ({len(c.config_diff)}):")
        lines.append(f"  {'key':<{width}}  {'A':>14}  {'B':>14}")
        for key, va, vb in c.config_diff:
            lines.append(f"  {key:<{width}}  {str(va):>14}  {str(vb):>14}")
    else:
        lines.append("config differences: none")
    lines += ["", "final metrics (%):", f"  {'metric':<14} {'A':>8} {'B':>8} {'A-B':>8}"]
    for name, va, vb, delta in c.metrics:
        lines.append(f"  {name:<14} {_num(va):>8} {_num(vb):>8} {_num(delta, True):>8}")
    for name, va, vb in c.other:
        lines.append(f"  {name:<14} {_raw(va):>8} {_raw(vb):>8}   (as stored)")
    if c.mechanism:
        lines += ["", "mechanism measures (%, standard protocol; docs/synthetic.md):",
                  f"  {'measure':<24} {'A':>8} {'B':>8} {'A-B':>8}"]
        for name, va, vb, delta in c.mechanism:
            lines.append(f"  {name:<24} {_num(va):>8} {_num(vb):>8} {_num(delta, True):>8}")
    if c.tests:
        lines += ["", f"paired per-image tests on {c.tests[0].n_images} images (McNemar exact test, p and p "
                      f"Holm-adjusted over the {len(c.tests)} metrics; paired bootstrap 95% CI of A-B, "
                      f"{c.n_resamples} resamples). Verdict: A or B better when p (Holm) < {ALPHA:.0%} and the CI "
                      "excludes 0 on the same side:",
                  f"  {'metric':<14} {'A %':>7} {'B %':>7} {'A-B':>7}  {'95% CI':<17} {'b01':>5} {'b10':>5} "
                  f"{'p':>8} {'p (Holm)':>8}  verdict"]
        for t in c.tests:
            ci = f"[{_num(t.ci_lo, True)}, {_num(t.ci_hi, True)}]"
            lines.append(f"  {t.metric:<14} {_num(t.acc_a):>7} {_num(t.acc_b):>7} {_num(t.delta, True):>7}  "
                         f"{ci:<17} {t.b01:>5} {t.b10:>5} {_p(t.p_value):>8} {_p(t.p_holm):>8}  {t.verdict}")
        lines.append("  (b01: A wrong and B right; b10: A right and B wrong)")
    for note in c.notes:
        lines.append(f"note: {note}")
    if c.verdict_withheld:
        lines += ["", c.verdict_withheld]
    return "\n".join(lines) + "\n"
