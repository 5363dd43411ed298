"""The C-L dilemma scatter (the paper's Figure 1(b)): Top-1 Cls against Top-1 Loc and GT-known Loc.

Every run of a scope is a point coloured by method (marker = seed); with several seeds, each
training setting's mean over them is a diamond (what the Figure 1(b) claims judge). The Pareto
front of our points (of the means, when there are several seeds) is drawn as a staircase, and the
paper's numbers for the scope's paper scope are drawn apart as stars, so a reader sees at once
whether the KD points escape the dilemma.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from kdcicam.analysis.results import METHODS
from kdcicam.analysis.stats import pareto_front
from kdcicam.report.figures import new_figure, to_png

PANELS = (("top1_loc", "Top-1 Loc (%)"), ("gt_known_loc", "GT-known Loc (%)"))


def method_palette() -> dict[str, tuple[float, float, float]]:
    """A fixed colour per method, the same in every figure."""
    return dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))


def setting_means(points: pd.DataFrame) -> pd.DataFrame:
    """One point per training setting read at one checkpoint: the mean of its seeds' runs.

    Args:
        points: :func:`kdcicam.analysis.results.scatter_points`.

    Returns:
        Columns method, selection, setting, n_seeds and the mean of each metric (NaN where no
        seed has it).
    """
    metrics = [m for m in ("top1_cls", "top1_loc", "gt_known_loc") if m in points]
    if points.empty:
        return pd.DataFrame(columns=["method", "selection", "setting", "n_seeds", *metrics])
    groups = points.groupby(["method", "selection", "setting"], sort=False)
    means = groups[metrics].mean()
    means["n_seeds"] = groups["seed"].nunique()
    return means.reset_index()[["method", "selection", "setting", "n_seeds", *metrics]]


def scatter_description(points: pd.DataFrame, paper_label: str) -> str:
    """The C-L scatter's caption: what a point, a diamond, the dashed line and a star are."""
    several = not points.empty and int(setting_means(points)["n_seeds"].max()) > 1
    if several:
        return ("Every run of this scope is a small point (colour = method, marker = seed); a diamond is one "
                "training setting's mean over its seeds (the points the claims judge); dashed: the Pareto front "
                f"of the means; stars: the paper's numbers ({paper_label}).")
    return ("Every run of this scope is a point (colour = method, marker = seed); dashed: the Pareto front of "
            f"our runs; stars: the paper's numbers ({paper_label}).")


def cl_scatter(points: pd.DataFrame, paper: pd.DataFrame, *, title: str, paper_label: str,
               subtitle: str = "") -> bytes | None:
    """Draw the two-panel C-L scatter.

    Args:
        points: :func:`kdcicam.analysis.results.scatter_points` (percent).
        paper: :func:`kdcicam.analysis.results.paper_points` for the scope's paper scope.
        title: figure title (scope and protocol).
        paper_label: how the paper's points are named, e.g. "CUB, VGG16".
        subtitle: a second, smaller title line (provenance, reduced-setting warning).

    Returns:
        PNG bytes, or None when no run has Top-1 Cls (nothing to draw).
    """
    if points.empty:
        return None
    palette = method_palette()
    hue_order = [m for m in METHODS if m in set(points["method"])]
    seeds = sorted(set(points["seed"]), key=lambda s: (len(s), s))
    fig = new_figure(12.5, 5.0)
    axes = fig.subplots(1, 2)
    means = setting_means(points)
    several = bool(len(means)) and int(means["n_seeds"].max()) > 1  # draw each setting's mean over seeds
    for i, (ax, (metric, label)) in enumerate(zip(axes, PANELS)):
        data = points.dropna(subset=["top1_cls", metric])
        if not data.empty:
            sns.scatterplot(data=data, x="top1_cls", y=metric, hue="method", hue_order=hue_order,
                            palette=palette, style="seed", style_order=seeds, s=40 if several else 70,
                            alpha=0.45 if several else 0.9, edgecolor="black", linewidth=0.4, ax=ax,
                            legend=i == 1, zorder=3)
            front_of = data
            if several:
                front_of = means.dropna(subset=["top1_cls", metric])
                ax.scatter(front_of["top1_cls"], front_of[metric], marker="D", s=80,
                           c=[palette[m] for m in front_of["method"]], edgecolors="black", linewidths=1.4,
                           zorder=4)
            xy = front_of[["top1_cls", metric]].to_numpy().round(6)  # (N, 2); 57.00000000000001 ties 57.0
            xy = xy[pareto_front(xy)]  # (F, 2), x ascending
            ax.plot(xy[:, 0], xy[:, 1], drawstyle="steps-pre", color="0.35", linestyle="--", linewidth=1.2,
                    label="Pareto front (ours)" + (", of the means" if several else ""), zorder=2)
        ref = paper.dropna(subset=["top1_cls", metric])
        if not ref.empty:
            ax.scatter(ref["top1_cls"], ref[metric], marker="*", s=240,
                       c=[palette[m] for m in ref["method"]], edgecolors="black", linewidths=0.9,
                       zorder=4)
        ax.set_xlabel("Top-1 Cls (%)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"Top-1 Cls vs {label.removesuffix(' (%)')}", fontsize=10)
    proxies = []
    if several:  # the diamonds are coloured by method; their legend entry is neutral
        proxies.append(Line2D([], [], linestyle="", marker="D", markersize=8, markerfacecolor="white",
                              markeredgecolor="black", markeredgewidth=1.4, label="mean over seeds"))
    if not paper.empty:  # the stars are coloured by method; their legend entry is neutral
        proxies.append(Line2D([], [], linestyle="", marker="*", markersize=15, markerfacecolor="white",
                              markeredgecolor="black", label=f"paper ({paper_label})"))
    _shared_legend(fig, axes, proxies)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    return to_png(fig)


def _shared_legend(fig, axes, proxies: list[Line2D]) -> None:
    """One legend for both panels, outside on the right: methods, seeds, front, paper."""
    handles, labels = [], []
    legend = axes[1].get_legend()
    if legend is not None:  # seaborn's hue/style entries (section titles included)
        handles += list(legend.legend_handles)
        labels += [text.get_text() for text in legend.texts]
        legend.remove()
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    handles += proxies
    labels += [p.get_label() for p in proxies]
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
