"""Rendering: report data + figures -> one HTML file, a Markdown page or a LaTeX snippet.

Templates (``templates/*.j2``) receive the dataclasses of :mod:`kdcicam.report.report_data` and a few
formatting filters; HTML is autoescaped, Markdown and LaTeX go through escaping filters
(:func:`md_escape`, :func:`tex_escape`) for every text that comes from the registry or the store.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from kdcicam.analysis.claims import LEDGER_NOTE
from kdcicam.analysis.results import paper_points
from kdcicam.core.fmt import fmt_signed, fmt_value, interval_text
from kdcicam.registry.ablations import Registry
from kdcicam.report.gallery import BOX_NOTES, common_sample, gallery_columns, gallery_figure, gallery_table, with_boxes
from kdcicam.report.report_data import ReportData, ScopeData
from kdcicam.report.scatter import cl_scatter, scatter_description
from kdcicam.report.sweep import SweepData, sweep_figure
from kdcicam.report.tables import METRIC_LABELS, MetricValue, RowData

FORMATS = {"html": "report.html", "md": "report.md", "latex": "report.tex"}
REDUCED_BANNER = "reduced setting — not a reproduction of the paper's numbers"
MARKS = {True: "✓", False: "✗", None: "–"}
FIRST_STEP = "kdcicam ablate table3 --backbone vgg16 --profile quick"
THETA_NOTES = {"fixed": "localization at each run's own θ (eval.theta)",
               "val": "localization at the θ chosen on the validation split (eval.theta_metric)"}
NO_AUDIT = ("Selection audit: no run of this scope stored per-epoch test numbers or θ-policy numbers "
            "(eval.audit_epochs off, as in the quick and paper profiles, or evaluated before the audit existed).")

_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "±": r"\ensuremath{\pm}", "✓": r"\ensuremath{\surd}", "✗": r"\ensuremath{\times}",
    "Δ": r"\ensuremath{\Delta}", "–": "--", "—": "---", "→": r"\ensuremath{\rightarrow}",
    "−": r"\ensuremath{-}", "≈": r"\ensuremath{\approx}", "θ": r"\ensuremath{\theta}",
}
_MD_SPECIAL = {"\\": "\\\\", "|": "\\|", "<": "&lt;", ">": "&gt;", "*": "\\*", "_": "\\_", "`": "\\`",
               "[": "\\[", "]": "\\]"}


# ----------------------------------------------------------------------------------- filters

def tex_escape(text: object) -> str:
    """Text safe inside LaTeX (special characters and the report's symbols replaced)."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def md_escape(text: object) -> str:
    """Text safe inside a GitHub Markdown table cell (no pipes, no raw HTML, no emphasis)."""
    return "".join(_MD_SPECIAL.get(ch, ch) for ch in str(text))


def metric_label(metric: str) -> str:
    """A metric's printed name ("Top-1 Loc"); a pair "top1_cls & top1_loc" names both."""
    return " & ".join(METRIC_LABELS.get(m, m) for m in metric.split(" & "))


def ours_text(v: MetricValue, row: RowData) -> str:
    """Our value as "mean ± std", with n when some of the row's seeds lack this metric."""
    if v.mean is None:
        return "—"
    text = fmt_value(v.mean) + (f" ± {v.std:.1f}" if v.std is not None else "")
    if v.n < len(row.seeds):
        text += f" (n={v.n})"
    return text


def delta_text(v: MetricValue) -> str:
    """Our change against the reference row, with the sign mark: "Δ +0.8 ✓" ("Δ +0.3 ✓ ≈" when the
    change is within the seed spread); "" when none."""
    if v.delta is None:
        return ""
    return f"Δ {fmt_signed(v.delta)} {MARKS[v.agree]}" + (" ≈" if v.within_noise else "")


def best_text(v: MetricValue) -> str:
    """What the best of the seeds would have printed; "—" with fewer than two seeds."""
    return fmt_value(v.best)


def audit_text(value: float | None, delta: float | None) -> str:
    """An audit number with its change against the reported one: "67.0 (Δ +2.0)"; "—" when none."""
    if value is None:
        return "—"
    return fmt_value(value) + (f" (Δ {fmt_signed(delta)})" if delta is not None else "")


def thetas_text(thetas: tuple[float | None, ...]) -> str:
    """Mean θ per policy, "0.14 / 0.20 / 0.25" (fixed / val / oracle); "—" where unknown."""
    return " / ".join("—" if t is None else f"{t:.2f}" for t in thetas)


def count_text(x: float | None) -> str:
    """A count (mean over seeds; integral when it is one); "—" when unknown."""
    if x is None:
        return "—"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def paper_text(v: MetricValue) -> str:
    """The paper's value and its change: "75.1 (Δ +0.4)"; "—" when the paper has none."""
    if v.paper is None:
        return "—"
    return fmt_value(v.paper) + (f" (Δ {fmt_signed(v.paper_delta)})" if v.paper_delta is not None else "")


def mark(agree: bool | None) -> str:
    return MARKS[agree]


# ----------------------------------------------------------------------------------- figures

@dataclass(frozen=True)
class FigureOut:
    file: str  # file name beside an md/latex report
    title: str
    caption: str  # provenance
    image: bytes  # PNG, or JPEG when ``file`` ends in .jpg
    description: str = ""  # what the figure shows (its caption's first sentence)

    @property
    def data_uri(self) -> str:
        media = "image/jpeg" if self.file.endswith(".jpg") else "image/png"
        return f"data:{media};base64," + base64.b64encode(self.image).decode("ascii")


@dataclass
class ScopeView:
    data: ScopeData
    scatter: dict[str, FigureOut | None] = field(default_factory=dict)  # protocol -> figure
    gallery: FigureOut | None = None
    gallery_notes: list[str] = field(default_factory=list)


def scope_views(data: ReportData, reg: Registry, *, figures: bool) -> list[ScopeView]:
    """Each scope with its C-L scatter per protocol and its gallery (when ``figures``)."""
    views = []
    for scope in data.scopes:
        view = ScopeView(data=scope)
        if figures:
            key = scope.key
            paper = paper_points(reg, key.paper_scope, [k for k in reg.tables if reg.tables[k].kind == "table"])
            subtitle = "REDUCED SETTING — not a reproduction of the paper's numbers" if key.reduced else ""
            for protocol, points in scope.points.items():
                title = f"C-L dilemma — {key.title} — {protocol} protocol"
                png = cl_scatter(points, paper, title=title, paper_label=key.paper_label, subtitle=subtitle)
                view.scatter[protocol] = None if png is None else FigureOut(
                    file=f"cl-{key.slug}-{protocol}.png", title=title, caption=scope.provenance.line(), image=png,
                    description=scatter_description(points, key.paper_label))
            table = gallery_table(reg)
            if table is not None:
                columns, notes = gallery_columns(table, scope.runs)
                ids = common_sample(columns)
                if columns and not ids:
                    notes.append("the gallery files share no image id")
                if ids:
                    title = f"Gallery — {key.title}"
                    box_note = BOX_NOTES["fixed"]
                    if data.threshold_policy != "fixed":
                        at_policy = with_boxes(columns, ids, scope.gallery_boxes)
                        if at_policy is None:
                            notes.append(f"no per-image records at the {data.threshold_policy} θ policy for every "
                                         "gallery image: its boxes are at the runs' own θ")
                        else:
                            columns, box_note = at_policy, BOX_NOTES[data.threshold_policy]
                    view.gallery = FigureOut(file=f"gallery-{key.slug}.jpg", title=title,
                                             caption=scope.provenance.line(),
                                             image=gallery_figure(columns, ids, title=title, box_note=box_note))
                view.gallery_notes = notes
        views.append(view)
    return views


@dataclass
class SweepRow:
    x: str
    name: str
    n: int
    cells: dict[str, str]  # metric -> text


@dataclass
class SweepView:
    """A sweep as the templates show it: the values table, the gap table and the figure."""

    data: SweepData
    rows: list[SweepRow]
    gap_rows: list[SweepRow]
    figure: FigureOut | None = None


def _sweep_rows(points, gap: bool) -> list[SweepRow]:
    rows: dict[tuple[float, str], SweepRow] = {}
    for p in points:
        row = rows.setdefault((p.x, p.name), SweepRow(x=f"{p.x:g}", name=p.name, n=0, cells={}))
        row.n = max(row.n, p.n)
        if gap:
            text = fmt_signed(p.mean)
            if p.ci is not None:
                text += f" [{fmt_signed(p.ci[0])}, {fmt_signed(p.ci[1])}]"
        else:
            text = fmt_value(p.mean) + (f" ± {p.std:.1f}" if p.std is not None else "")
        row.cells[p.metric] = text
    return list(rows.values())


def sweep_views(data: ReportData, *, figures: bool) -> list[SweepView]:
    """Each sweep with its tables (and its figure when ``figures``)."""
    views = []
    for w in data.sweeps:
        view = SweepView(data=w, rows=_sweep_rows(w.values, gap=False), gap_rows=_sweep_rows(w.gaps, gap=True))
        if figures:
            png = sweep_figure(w, [m for m in w.metrics if m != "top1_cls"] or list(w.metrics), METRIC_LABELS)
            if png is not None:
                slug = re.sub(r"[^a-z0-9]+", "-", f"{w.key}-{w.group}-{w.protocol}".lower()).strip("-")
                view.figure = FigureOut(file=f"sweep-{slug}.png", title=f"{w.title} ({w.protocol} protocol)",
                                        caption=w.group, image=png)
        views.append(view)
    return views


# ---------------------------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Rendered:
    text: str
    files: dict[str, bytes]  # figure files to save beside the report (md/latex)


def p_holm_text(r: Any) -> str:
    """A ledger row's test: "p (p Holm, family of m)", uncorrected then adjusted; "—" without a test."""
    if r.p_value is None:
        return "—"
    if r.p_holm is None:
        return f"{r.p_value:.3g}"
    return f"{r.p_value:.3g} ({r.p_holm:.3g}, {r.family_size})"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kdcicam.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True,
                                            default=False),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
    )
    env.filters.update(tex=tex_escape, md=md_escape, value=fmt_value, signed=fmt_signed, mark=mark,
                       ours=ours_text, delta=delta_text, paper=paper_text, best=best_text, audit=audit_text,
                       thetas=thetas_text, count=count_text, interval=interval_text,
                       label=metric_label, trim_float=lambda x: f"{x:g}", p_holm=p_holm_text)
    env.globals["ledger_note"] = LEDGER_NOTE
    return env


def _script() -> tuple[Markup, str]:
    """The HTML report's inline script and its CSP hash (only this exact script may run)."""
    text = resources.files("kdcicam.report").joinpath("templates", "report.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return Markup(text), f"sha256-{digest}"


def render(data: ReportData, reg: Registry, fmt: str, *, figures: bool = True) -> Rendered:
    """Render the report.

    Args:
        data: from :func:`kdcicam.report.collect.collect`.
        reg: the registry (paper points, gallery cells).
        fmt: "html" | "md" | "latex".
        figures: draw the figures (HTML embeds them; md/latex link to files returned in ``files``).

    Returns:
        The document and the figure files to write beside it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    views = scope_views(data, reg, figures=figures)
    sweeps = sweep_views(data, figures=figures)
    script, script_hash = _script() if fmt == "html" else (Markup(""), "")
    template = _environment().get_template(f"report.{ 'tex' if fmt == 'latex' else fmt}.j2")
    text = template.render(report=data, scopes=views, figures=figures, banner=REDUCED_BANNER,
                           first_step=FIRST_STEP, metric_labels=METRIC_LABELS, script=script,
                           script_hash=script_hash, no_audit=NO_AUDIT, sweeps=sweeps,
                           theta_note=THETA_NOTES.get(data.threshold_policy, data.threshold_policy))
    files: dict[str, bytes] = {}
    if fmt != "html":
        for view in views:
            for fig in [*view.scatter.values(), view.gallery]:
                if fig is not None:
                    files[fig.file] = fig.image
        for sweep in sweeps:
            if sweep.figure is not None:
                files[sweep.figure.file] = sweep.figure.image
    return Rendered(text=text, files=files)
