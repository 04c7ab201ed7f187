"""Benchmark output: a Markdown table for stdout/README, and the pieces every benchmark figure shares: a figure
with a wrapped title and a panel of notes under its plots (the headline numbers, what bars and whiskers are, a
load warning), and a grouped bar chart (PNG)."""
from __future__ import annotations

import textwrap
from typing import Dict, List, Optional, Sequence

__all__ = ["markdown_table", "bar_chart", "fmt_spread", "fmt_value", "figure", "save_figure", "load_note"]


def fmt_value(v) -> str:
    """A table or figure value: 3 significant digits below 1000, whole numbers above (1550, not 1.55e+03), "-" for
    None."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        return f"{v:.3g}" if abs(v) < 1e3 else f"{v:.0f}"   # (1550, not 1.55e+03)
    return str(v)


def fmt_spread(s: Dict[str, float]) -> str:
    """A :func:`lmdeq.app.bench.interleave.spread` as 'median (IQR iqr; min-max)'."""
    return f"{fmt_value(s['median'])} (IQR {fmt_value(s['iqr'])}; {fmt_value(s['min'])}-{fmt_value(s['max'])})"


def markdown_table(rows: Sequence[Dict], columns: Sequence[str], headers: Sequence[str] = None) -> str:
    """Rows (dicts) as a Markdown table over ``columns`` (missing values print as '-')."""
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt_value(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def load_note(load: Optional[Dict]) -> List[str]:
    """The figure line of a load record (:func:`lmdeq.app.bench.device.load_record`): its warning when the load
    average exceeded the thread count, else nothing."""
    return ["WARNING: " + load["warning"]] if load and load.get("warning") else []


def _wrapped(lines: Sequence[str], width_in: float, fontsize: float) -> List[str]:
    """``lines`` wrapped to a text width of ``width_in`` inches at ``fontsize`` points (about 0.55 em a
    character), so that nothing runs past the figure's edge."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return [w for line in lines for w in (textwrap.wrap(line, chars, subsequent_indent="  ") or [""])]


def figure(title: str, size, notes: Sequence[str] = (), ncols: int = 1, title_size: float = 10.0,
           note_size: float = 8.0):
    """A figure of ``ncols`` plot axes side by side (``size``: their width and height in inches), the title wrapped
    to the figure's width above them, and ``notes`` (lines, wrapped) in a text panel under them. Returns
    (fig, axes: a list)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = size
    lines = _wrapped(notes, width - 0.3, note_size)
    title_lines = _wrapped([title], width - 0.3, title_size)
    note_h = (0.17 * len(lines) + 0.12) if lines else 0.0
    title_h = 0.2 * len(title_lines) + 0.1
    fig = plt.figure(figsize=(width, height + note_h + title_h))
    grid = fig.add_gridspec(2 if lines else 1, ncols, height_ratios=[height, note_h] if lines else None)
    axes = [fig.add_subplot(grid[0, i]) for i in range(ncols)]
    fig.suptitle("\n".join(title_lines), fontsize=title_size)
    if lines:
        panel = fig.add_subplot(grid[1, :])
        panel.axis("off")
        panel.text(0.0, 0.0, "\n".join(lines), transform=panel.transAxes, ha="left", va="bottom",
                   fontsize=note_size, family="DejaVu Sans")
    return fig, axes


def save_figure(fig, path: str) -> str:
    """Lay ``fig`` out (nothing clipped), write it to ``path`` (PNG, 120 dpi) and close it. Returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


def bar_chart(path: str, title: str, groups: List[str], series: Dict[str, List[float]], ylabel: str,
              errors: Optional[Dict[str, List[Dict[str, float]]]] = None, log_y: bool = False,
              notes: Sequence[str] = ()) -> str:
    """Grouped bars: one group per entry of ``groups``, one bar per series, each labelled with its value.
    ``errors[name]`` (optional): one spread per bar (:func:`lmdeq.app.bench.interleave.spread`), drawn as a
    min-max whisker. ``log_y``: a logarithmic value axis (bars that differ by 10x stay readable); ``notes``: lines
    written under the plot (the headline ratios, what the bars and whiskers are, a load warning). Returns
    ``path``."""
    import matplotlib.ticker

    fig, (ax,) = figure(title, (max(6.0, 0.8 * len(groups) * max(1, len(series))), 4.0), notes)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        yerr = None
        if errors and name in errors:
            yerr = [[v - e["min"] for v, e in zip(values, errors[name])],
                    [e["max"] - v for v, e in zip(values, errors[name])]]
        bars = ax.bar(xs, values, width, label=name, yerr=yerr, capsize=3 if yerr else 0)
        ax.bar_label(bars, labels=[fmt_value(v) for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel + (" (log scale)" if log_y else ""))
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: fmt_value(float(v))))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 1.6)   # room for the value labels above the tallest whisker
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(fig, path)
