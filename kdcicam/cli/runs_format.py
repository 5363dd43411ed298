"""How ``kdcicam runs`` shows runs: a run's headline metrics, value and time formatting, a running run's
progress, and the console tables are printed on."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:  # pandas and the store are imported when a command runs, not at start-up
    import pandas as pd

    from kdcicam.store import RunInfo

HEADLINE_METRICS = ("top1_cls", "top1_loc", "gt_known_loc")
# Which evaluation a run's headline numbers come from, most preferred first (paper protocol,
# last checkpoint, the paper's fixed θ, test split), falling back to whatever was evaluated.
_PREFERENCE = {
    "protocol": ("paper", "standard"),
    "selection": ("last", "top1_loc", "gt_known_loc", "top1_cls"),
    "threshold_policy": ("fixed", "val", "oracle"),
    "split": ("test", "val"),
}
EVAL_GROUP = ["protocol", "selection", "threshold_policy", "split"]
DEFAULT_SOURCE = "/".join(values[0] for values in _PREFERENCE.values())  # paper/last/fixed/test


def headline(finals: pd.DataFrame) -> tuple[str | None, dict[str, float | None]]:
    """A run's key numbers from its long-format final metrics.

    Args:
        finals: one run's rows of :meth:`Store.final_metrics`.

    Returns:
        ("protocol/selection/threshold_policy/split" of the evaluation used, {name: value} for the
        names in HEADLINE_METRICS it has, NaN as None); (None, {}) when no evaluation has any.
    """
    import pandas as pd

    rows = finals[finals["name"].isin(HEADLINE_METRICS)]
    if rows.empty:
        return None, {}

    def rank(key: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(_PREFERENCE[col].index(val) if val in _PREFERENCE[col] else len(_PREFERENCE[col])
                     for col, val in zip(EVAL_GROUP, key))

    best = min((tuple(key) for key in rows[EVAL_GROUP].drop_duplicates().itertuples(index=False)), key=rank)
    chosen = rows[(rows[EVAL_GROUP] == pd.Series(best, index=EVAL_GROUP)).all(axis=1)]
    return "/".join(best), metric_values(chosen)


def metric_values(rows: pd.DataFrame) -> dict[str, float | None]:
    """name -> value of long-format rows, NaN as None (so JSON output stays valid JSON)."""
    return {name: None if math.isnan(value) else float(value)
            for name, value in zip(rows["name"], rows["value"].astype(float))}


def table_console() -> Console:
    """A console for tables: piped output gets room for every column instead of 80 characters."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    return console


def fmt_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_when(moment: Any) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, secs = divmod(value, 60)
    return f"{value:.1f} s" if minutes == 0 else f"{int(minutes)} min {secs:.0f} s ({value:.0f} s)"


def run_progress(store, run: RunInfo) -> dict[str, Any]:
    """A running run's epochs done (of its epochs) and, when its process is gone, why we think so."""
    from kdcicam.execution.holders import holder_gone

    curves = store.epoch_metrics(run.id)
    trained = curves[curves["split"] == "train"]["epoch"]
    return {"epochs_done": int(trained.max()) + 1 if len(trained) else 0,
            "epochs": int(run.config.get("train", {}).get("epochs", 0) or 0), "holder_gone": holder_gone(run)}
