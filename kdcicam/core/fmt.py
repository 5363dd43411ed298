"""How numbers read in every table kdcicam prints: percentages, signed changes, intervals.

Shared by the report's templates and the CLI's tables; no dependencies, so a command can format
without loading the report's plotting stack.
"""

from __future__ import annotations

import math


def fmt_value(x: float | None) -> str:
    """A percentage with one decimal; "—" for no value."""
    return "—" if x is None or math.isnan(x) else f"{x:.1f}"


def interval_text(lo: float | None, hi: float | None) -> str:
    """A 95 % interval in points, "[−1.2, +3.4]"; "—" when there is none."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "—"
    return f"[{fmt_signed(lo)}, {fmt_signed(hi)}]"


def fmt_signed(x: float | None) -> str:
    """A signed change with one decimal ("+0.4", "−1.2"); "—" for none."""
    if x is None or math.isnan(x):
        return "—"
    size = f"{abs(x):.1f}"
    if size == "0.0":
        return size
    return ("+" if x > 0 else "−") + size
