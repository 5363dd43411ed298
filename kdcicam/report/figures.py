"""Matplotlib plumbing shared by the report's figures: Agg canvases, never pyplot's global state."""

from __future__ import annotations

import io
import textwrap

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas (no pyplot: nothing global, safe in tests and threads)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def to_jpeg(fig: Figure, dpi: int = 110, quality: int = 85) -> bytes:
    """The figure as JPEG bytes: for figures of photographs and heatmaps, which PNG compresses poorly
    (a Table 3 gallery: ~650 kB as PNG, a fifth of it as JPEG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=dpi, pil_kwargs={"quality": quality, "optimize": True})
    return buf.getvalue()


def wrap_to_width(text: str, width_in: float, fontsize: float = 10) -> str:
    """``text`` with each line broken at spaces so that it fits ``width_in`` inches at ``fontsize`` points
    (about 0.6 em per character of DejaVu Sans, with a margin): a figure title wider than its figure is cut off at both
    ends, not shrunk."""
    per_line = max(20, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, per_line, break_long_words=False) if line else line
                     for line in text.split("\n"))
