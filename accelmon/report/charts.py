"""Charts as standalone SVG (matplotlib, object API: no pyplot state, safe in the daemon's threads)."""

from __future__ import annotations

import base64
import io

import numpy as np
import polars as pl
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

_CMAP = LinearSegmentedColormap.from_list("util", ["#f1f5f9", "#93c5fd", "#2563eb", "#1e3a8a"])
FONT = {"font.size": 9}


def _svg(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buf.getvalue().decode()


def _png(fig: Figure) -> bytes:
    """PNG for e-mail bodies (mail clients do not render SVG; accelmon/mail inlines these as cid: images)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def heatmap(heat: pl.DataFrame, order: list[str], start_ms: int, cell_ms: int, ncells: int, max_rows: int = 400) -> str:
    """GPU × time cell mean utilization; rows in ``order`` (idle first), blank = no data."""
    rows = order[:max_rows]
    idx = {g: i for i, g in enumerate(rows)}
    grid = np.full((max(len(rows), 1), max(ncells, 1)), np.nan)
    if heat.height and rows:
        h = heat.filter(pl.col("gpu").is_in(rows))
        r = np.array([idx[g] for g in h["gpu"].to_list()], dtype=np.int64)
        c = ((h["cell_start_ms"].to_numpy() - start_ms) // cell_ms).astype(np.int64)
        ok = (c >= 0) & (c < ncells)
        grid[r[ok], c[ok]] = h["util_percent"].to_numpy()[ok]
    height = min(9.0, 1.2 + 0.018 * len(rows))
    fig = Figure(figsize=(10, max(height, 2.2)))
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=_CMAP, vmin=0, vmax=100)
    ax.set_xlabel(f"time ({cell_ms / 3.6e6:g} h per column, from window start)")
    ax.set_ylabel(f"GPUs ({len(rows)}{' shown of ' + str(len(order)) if len(order) > len(rows) else ''}, idle first)")
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, label="utilization %", fraction=0.03, pad=0.01)
    return _svg(fig)


def distribution(mean_util: list[float], threshold: float) -> str:
    return _svg(distribution_figure(mean_util, threshold))


def distribution_png(mean_util: list[float], threshold: float) -> bytes:
    return _png(distribution_figure(mean_util, threshold))


def distribution_figure(mean_util: list[float], threshold: float) -> Figure:
    fig = Figure(figsize=(6.5, 3))
    ax = fig.subplots()
    ax.hist(mean_util or [0], bins=np.arange(0, 102.5, 2.5), color="#2563eb", edgecolor="white")
    ax.axvline(threshold, color="#dc2626", linestyle="--", linewidth=1.5)
    ax.text(threshold + 1, ax.get_ylim()[1] * 0.9, f"{threshold:g} % threshold", color="#dc2626")
    ax.set_xlabel("mean utilization over the window (%)")
    ax.set_ylabel("GPUs")
    ax.set_xlim(0, 100)
    return fig


def stun(vgpu: list[float], other: list[float], limit: float) -> str:
    fig = Figure(figsize=(6.5, 3))
    ax = fig.subplots()
    allv = vgpu + other
    top = max(allv + [limit]) * 1.1 if allv else limit * 2
    bins = np.linspace(0, top, 30)
    if other:
        ax.hist(other, bins=bins, alpha=0.7, label=f"no vGPU ({len(other)})", color="#64748b")
    if vgpu:
        ax.hist(vgpu, bins=bins, alpha=0.7, label=f"vGPU ({len(vgpu)})", color="#7c3aed")
    ax.axvline(limit, color="#dc2626", linestyle="--", linewidth=1.5, label=f"limit {limit:g} s")
    ax.set_xlabel("stun time per migration (s)")
    ax.set_ylabel("migrations")
    ax.legend(frameon=False)
    return _svg(fig)


def top_idle(labels: list[str], idle_hours: list[float]) -> str:
    return _svg(top_idle_figure(labels, idle_hours))


def top_idle_png(labels: list[str], idle_hours: list[float], xlabel: str = "idle GPU-hours in the window") -> bytes:
    return _png(top_idle_figure(labels, idle_hours, xlabel))


def top_idle_figure(labels: list[str], idle_hours: list[float], xlabel: str = "idle GPU-hours in the window"
                    ) -> Figure:
    fig = Figure(figsize=(6.5, 0.6 + 0.22 * max(len(labels), 1)))
    ax = fig.subplots()
    y = np.arange(len(labels))
    ax.barh(y, idle_hours, color="#f59e0b")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return fig
