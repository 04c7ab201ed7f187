"""Benchmark output: a Markdown table for stdout/README and a grouped bar chart (PNG)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

__all__ = ["markdown_table", "bar_chart", "fmt_spread"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        return f"{v:.3g}" if abs(v) < 1e3 else f"{v:.0f}"   # (1550, not 1.55e+03)
    return str(v)


def fmt_spread(s: Dict[str, float]) -> str:
    """A :func:`lmdeq.app.bench.interleave.spread` as 'median (IQR iqr; min-max)'."""
    return f"{_fmt(s['median'])} (IQR {_fmt(s['iqr'])}; {_fmt(s['min'])}-{_fmt(s['max'])})"


def markdown_table(rows: Sequence[Dict], columns: Sequence[str], headers: Sequence[str] = None) -> str:
    """Rows (dicts) as a Markdown table over ``columns`` (missing values print as '-')."""
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def bar_chart(path: str, title: str, groups: List[str], series: Dict[str, List[float]], ylabel: str,
              errors: Optional[Dict[str, List[Dict[str, float]]]] = None, log_y: bool = False,
              notes: Sequence[str] = ()) -> str:
    """Grouped bars: one group per entry of ``groups``, one bar per series. ``errors[name]`` (optional):
    one spread per bar (:func:`lmdeq.app.bench.interleave.spread`), drawn as a min-max whisker. ``log_y``: a
    logarithmic value axis (bars that differ by 10x stay readable); ``notes``: lines written in a box on the
    figure (the headline ratios, what the whiskers are, a load warning). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(series)) / 2), 4.0))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        yerr = None
        if errors and name in errors:
            yerr = [[v - e["min"] for v, e in zip(values, errors[name])],
                    [e["max"] - v for v, e in zip(values, errors[name])]]
        bars = ax.bar(xs, values, width, label=name, yerr=yerr, capsize=3 if yerr else 0)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel + (" (log scale)" if log_y else ""))
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: _fmt(float(v))))
    ax.set_title(title, fontsize=10, wrap=True)
    ax.legend(fontsize=8, loc="upper right")
    if notes:
        ax.text(0.99, 0.80, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="0.7"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
