"""Every figure of the kit, written as PNG with matplotlib's Agg canvas (no display, no pyplot state).

The panel helpers take ``{panel: ...}`` (one panel per benchmark or split, side by side) and a path, and return
the path:

    pass_at_k_curves({"math500": {"base": {1: 0.3, 2: 0.4, ...}, "rl": {...}}}, "pass_at_k.png")
    accuracy_histograms({"math500": {"base": {"0": 12, "(0,0.1]": 3, ...}}}, "accuracy_histogram.png")
    box_plots({"math500": {"base": [1.3, 1.2, ...], "rl": [...]}}, "perplexity.png", ylabel="PPL")
    bar_chart({"math500": {"rl": {"base_only": 3, "both": 40, "other_only": 0}}}, "overlap.png")

and the one-figure helpers of single recipes: entropy_histograms, top_tokens, overlap_by_step (entropy
analysis), ranking (example selection), loss_curve (distillation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "accuracy_histograms",
    "bar_chart",
    "box_plots",
    "entropy_histograms",
    "interval_bars",
    "step_curves",
    "loss_curve",
    "overlap_by_step",
    "pass_at_k_curves",
    "ranking",
    "top_tokens",
]

_PANEL_WIDTH = 4.2
_PANEL_HEIGHT = 3.4


def _figure(num_panels: int, *, width: float = _PANEL_WIDTH, height: float = _PANEL_HEIGHT, max_columns: int = 3):
    """A figure with one axes per panel on a grid; unused grid cells are hidden."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if num_panels < 1:
        raise ValueError("a figure needs at least one panel (benchmark); got none")
    columns = min(num_panels, max_columns)
    rows = math.ceil(num_panels / columns)
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).reshape(-1)
    for ax in axes[num_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:num_panels])


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def pass_at_k_curves(
    results: Mapping[str, Mapping[str, Mapping[int, float]]],
    path: str | Path,
    *,
    title: str | None = None,
    subtitles: Mapping[str, str] | None = None,
    bands: Mapping[str, Mapping[str, Mapping[int, tuple[float, float]]]] | None = None,
) -> Path:
    """pass@k against k (log2 axis): one panel per benchmark, one line per model.

    Args:
        results: ``{benchmark: {model: {k: pass@k}}}``; k may be int or str.
        title: figure title.
        subtitles: extra text per panel title (e.g. ``"100 problems, n = 256"``).
        bands: ``{benchmark: {model: {k: (low, high)}}}``, an interval drawn as a shaded band around the line.
    """
    fig, axes = _figure(len(results))
    for ax, (panel, by_model) in zip(axes, results.items()):
        all_ks: set[int] = set()
        for model, curve in by_model.items():
            ks = sorted(int(k) for k in curve)
            values = [float(curve[k] if k in curve else curve[str(k)]) for k in ks]
            all_ks.update(ks)
            (line,) = ax.plot(ks, values, marker="o", markersize=3.5, linewidth=1.6, label=model)
            band = (bands or {}).get(panel, {}).get(model)
            if band:
                lows = [band[k][0] if k in band else band[str(k)][0] for k in ks]
                highs = [band[k][1] if k in band else band[str(k)][1] for k in ks]
                ax.fill_between(ks, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ticks = sorted(all_ks)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(k) for k in ticks], fontsize=7 if len(ticks) > 7 else 9)
        ax.minorticks_off()
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.grid(True, alpha=0.3)
        ax.set_title(panel + (f" ({subtitles[panel]})" if subtitles and panel in subtitles else ""), fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def accuracy_histograms(
    histograms: Mapping[str, Mapping[str, Mapping[str, int]]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Problems per per-problem-accuracy bin: one panel per benchmark, grouped bars (one colour per model).

    Args:
        histograms: ``{benchmark: {model: {bin label: count}}}`` with the bins in display order
            (:func:`reprokit.metrics.functional.accuracy_histogram` gives them so).
    """
    fig, axes = _figure(len(histograms), width=5.6)
    for ax, (panel, by_model) in zip(axes, histograms.items()):
        models = list(by_model)
        labels = list(next(iter(by_model.values())).keys()) if models else []
        width = 0.8 / max(len(models), 1)
        for m, model in enumerate(models):
            xs = [i - 0.4 + width * (m + 0.5) for i in range(len(labels))]
            ax.bar(xs, [by_model[model].get(label, 0) for label in labels], width=width, label=model)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("per-problem accuracy")
        ax.set_ylabel("problems")
        ax.set_title(panel, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def box_plots(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    ylabel: str = "",
    title: str | None = None,
    log_y: bool = False,
    clip_quantile: float | None = None,
) -> Path:
    """One panel per benchmark, one box per label (whiskers at 1.5 IQR, outliers as dots).

    Args:
        values: ``{benchmark: {label: [values]}}``; a label without values gets an empty slot.
        clip_quantile: e.g. 0.99: the y axis spans the panel's [1 - q, q] quantiles, so that a few far outliers
            do not squash every box into a line; the panel title says how many points lie off the axis.
    """
    fig, axes = _figure(len(values))
    for ax, (panel, by_label) in zip(axes, values.items()):
        labels = list(by_label)
        data = [list(by_label[label]) for label in labels]
        ax.boxplot(data, tick_labels=labels, showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
        counts = [len(d) for d in data]
        heading = f"{panel} ({', '.join(map(str, counts))} responses)"
        flat = sorted(v for d in data for v in d)
        if clip_quantile is not None and len(flat) > 1:
            lo = flat[int((1 - clip_quantile) * (len(flat) - 1))]
            hi = flat[int(round(clip_quantile * (len(flat) - 1)))]
            hidden = sum(1 for v in flat if v < lo or v > hi)
            if hidden and hi > lo:
                pad = 0.08 * (hi - lo)
                ax.set_ylim(lo - pad, hi + pad)
                heading += f"\n{hidden} points beyond the {1 - clip_quantile:.0%}-{clip_quantile:.0%} range not shown"
        ax.set_title(heading, fontsize=10)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bar_chart(
    values: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | Path,
    *,
    ylabel: str = "",
    title: str | None = None,
) -> Path:
    """Grouped bars: one panel per benchmark, one group per key, one bar per series within a group.

    Args:
        values: ``{benchmark: {group: {series: value}}}``; every group should have the same series.
    """
    fig, axes = _figure(len(values))
    for ax, (panel, by_group) in zip(axes, values.items()):
        groups = list(by_group)
        series = list(dict.fromkeys(s for g in groups for s in by_group[g]))
        width = 0.8 / max(len(series), 1)
        for j, name in enumerate(series):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
            heights = [by_group[g].get(name, 0) for g in groups]
            bars = ax.bar(xs, heights, width=width, label=name)
            ax.bar_label(bars, fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _single(width: float, height: float):
    """A figure with one axes."""
    fig, axes = _figure(1, width=width, height=height)
    return fig, axes[0]


def entropy_histograms(values, stats: Mapping, path: str | Path) -> Path:
    """Two views of one token-entropy distribution: a linear entropy axis (as the paper plots it) and log10
    entropy, where the near-deterministic majority below 0.01 nats is resolved too.

    Args:
        values: 1-D array of entropies (nats).
        stats: ``num_tokens``, ``mean``, ``frac_low`` (share below 0.01) and ``p80`` of those values.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    fig, (linear, logarithmic) = _figure(2, width=5.0, height=3.6)
    top = max(float(values.max()) if values.size else 1.0, 1e-3)
    linear.hist(values, bins=np.linspace(0, top, 61), color="tab:blue", alpha=0.85)
    linear.set_yscale("log")
    linear.set_xlabel("token entropy (nats)")
    linear.set_ylabel("tokens (log scale)")
    floor = 1e-8  # exact zeros (one-hot distributions) land in the first bin of the log view
    logarithmic.hist(np.log10(np.clip(values, floor, None)), bins=60, color="tab:blue", alpha=0.85)
    logarithmic.axvline(np.log10(0.01), color="gray", ls=":", lw=1, label="0.01 nats")
    logarithmic.set_xlabel("log10 token entropy (nats)")
    logarithmic.set_ylabel("tokens")
    for ax in (linear, logarithmic):
        p80 = stats["p80"] if ax is linear else np.log10(max(stats["p80"], floor))
        ax.axvline(p80, color="tab:red", ls="--", lw=1, label=f"80th percentile {stats['p80']:.3g}")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{stats['num_tokens']} response tokens: mean {stats['mean']:.3f} nats, "
        f"{stats['frac_low']:.0%} below 0.01, 80th percentile {stats['p80']:.3g}",
        fontsize=10,
    )
    return _save(fig, path)


def entropy_comparison(values: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Token-entropy distributions of several models' responses on one log10 axis, each labelled with its share
    below 0.01 nats and its 80th percentile."""
    import numpy as np

    fig, ax = _single(6.0, 3.6)
    floor = 1e-8
    for i, (name, raw) in enumerate(values.items()):
        v = np.asarray(raw, dtype=np.float64)
        if not v.size:
            continue
        label = f"{name}: {np.mean(v < 0.01):.0%} below 0.01, p80 {np.quantile(v, 0.8):.3g}"
        ax.hist(np.log10(np.clip(v, floor, None)), bins=60, histtype="step", lw=1.5, color=f"C{i}", label=label, density=True)
    ax.axvline(np.log10(0.01), color="gray", ls=":", lw=1)
    ax.set_xlabel("log10 token entropy (nats)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _save(fig, path)


def top_tokens(table: Sequence[Mapping], rho: float, path: str | Path) -> Path:
    """Horizontal bars of the most frequent tokens at high-entropy positions (rows with ``token``, ``count``)."""
    fig, ax = _single(6, max(2.5, 0.22 * len(table) + 1))
    labels = [row["token"] for row in table][::-1]
    ax.barh(range(len(table)), [row["count"] for row in table][::-1], color="tab:orange")
    ax.set_yticks(range(len(table)), labels, fontsize=8)
    ax.set_xlabel(f"count among the top-{rho:.0%} entropy positions")
    ax.set_title(f"Most frequent high-entropy tokens (top {len(table)})", fontsize=9)
    return _save(fig, path)


def overlap_by_step(rows: Sequence[Mapping], rho: float, path: str | Path) -> Path:
    """Overlap (rows with ``step``, ``overlap`` in [0, 1]) of top-rho entropy positions with the base, per step."""
    fig, ax = _single(5.5, 3.5)
    ax.plot([r["step"] for r in rows], [100 * r["overlap"] for r in rows], marker="o", color="tab:green")
    ax.axhline(86, color="gray", ls=":", lw=1, label="paper: > 86% after RL")
    ax.set_ylim(0, 102)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"top-{rho:.0%} positions shared with base (%)")
    ax.set_title("Overlap of high-entropy positions with the base model", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def ranking(rows: Sequence, path: str | Path) -> Path:
    """Bars of the top-ranked examples' scores (rows with ``rank``, ``index``, ``score``)."""
    fig, ax = _single(max(6.0, 0.4 * len(rows)), 3.5)
    ax.bar(range(len(rows)), [row.score for row in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), [f"π{row.rank}\n{row.index}" for row in rows], fontsize=7)
    ax.set_xlabel("rank (π_j) and example index")
    ax.set_ylabel("variance of training accuracy")
    ax.set_title(f"Top {len(rows)} examples by historical variance score")
    return _save(fig, path)


def loss_curve(losses: Mapping[int, float], path: str | Path, *, title: str = "Distillation: SFT on teacher traces") -> Path:
    """Loss against optimizer step (``{step: loss}``)."""
    steps = sorted(losses)
    fig, ax = _single(5.5, 3.5)
    ax.plot(steps, [losses[s] for s in steps], color="tab:blue", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("next-token loss on responses (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def step_curves(
    panels: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    path: str | Path,
    *,
    title: str | None = None,
    max_columns: int = 4,
) -> Path:
    """Quantities against the training step: one panel per quantity, one line per run.

    Args:
        panels: ``{quantity: {run label: [(step, value), ...]}}``; runs sharing a label prefix before " #" (their
            seeds, "one-shot #1") share a colour.
    """
    fig, axes = _figure(len(panels), width=4.0, height=3.0, max_columns=max_columns)
    colours: dict[str, str] = {}
    palette = [f"C{i}" for i in range(10)]
    for ax, (quantity, runs) in zip(axes, panels.items()):
        labelled: set[str] = set()
        for label, points in runs.items():
            group = label.split(" #")[0]
            colour = colours.setdefault(group, palette[len(colours) % len(palette)])
            if points:
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, color=colour, linewidth=1.2, alpha=0.85, label=None if group in labelled else group)
                labelled.add(group)
        ax.set_xlabel("training step")
        ax.set_title(quantity, fontsize=10)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(handles, labels, fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def interval_bars(
    values: Mapping[str, Mapping[str, tuple[float, float, float]]],
    path: str | Path,
    *,
    ylabel: str = "",
    title: str | None = None,
    reference: float | None = 0.0,
) -> Path:
    """Bars with intervals: one panel per key, one bar per series, ``(value, low, high)`` each."""
    fig, axes = _figure(len(values), width=max(4.0, 0.9 * max(len(v) for v in values.values()) + 1.5), height=3.4)
    for ax, (panel, series) in zip(axes, values.items()):
        names = list(series)
        mids = [series[n][0] for n in names]
        errors = [[m - series[n][1] for n, m in zip(names, mids)], [series[n][2] - m for n, m in zip(names, mids)]]
        ax.bar(range(len(names)), mids, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        if reference is not None:
            ax.axhline(reference, color="gray", lw=0.8)
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
