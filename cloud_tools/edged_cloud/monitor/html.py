"""The self-contained HTML report: plots as inline PNGs (matplotlib, the ``train`` extra),
the device table, nothing fetched when it is opened.

Plots: the anomaly rate per hour (the fleet's median and every flagged device), the input
histogram against the training distribution for each drifted device's worst feature, and
the fleet map of drift: a device x feature heatmap of PSI (flagged devices first, at most
MAP_ROWS rows). Without matplotlib the report says so where the plots would be.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

MAP_ROWS = 60
HISTOGRAMS = 12


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return ("<img alt='plot' src='data:image/png;base64,"
            + base64.b64encode(buffer.getvalue()).decode() + "'>")


def plots(report: dict, options) -> list[tuple[str, str]]:
    """(title, <img>) for each plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return [*_anomaly_rate(plt, report), *_histograms(plt, report),
            *_drift_map(plt, report, options)]


def _anomaly_rate(plt, report: dict) -> list[tuple[str, str]]:
    series = report["_series"]
    flagged = {e["device"] for e in report["devices"] if e["silent"] or e["drift"]["drifted"]}
    out = []
    fig, ax = plt.subplots(figsize=(9, 3))
    rates: dict[float, list[float]] = {}
    for (_device, _version), s in series.items():
        for start, (n, bad, _counts) in s.hours.items():
            if n:
                rates.setdefault(start, []).append(bad / n)
    if rates:
        hours = sorted(rates)
        ax.plot([(h - hours[0]) / 3600 for h in hours],
                [100 * np.median(rates[h]) for h in hours], color="black", label="fleet median")
        for (device, _version), s in series.items():
            if device in flagged:
                pts = sorted((h, 100 * b / n) for h, (n, b, _c) in s.hours.items() if n)
                ax.plot([(h - hours[0]) / 3600 for h, _ in pts], [r for _, r in pts],
                        label=device)
    ax.set_xlabel("hours since the start of the report")
    ax.set_ylabel("anomalous decisions %")
    ax.legend(fontsize=7, loc="upper left")
    out.append(("Anomaly rate per hour", _png(fig)))
    plt.close(fig)
    return out


def _histograms(plt, report: dict) -> list[tuple[str, str]]:
    series, out = report["_series"], []
    drifted = [e for e in report["devices"] if e["drift"]["drifted"]][:HISTOGRAMS]
    for e in drifted:
        s = series.get((e["device"], e["model_version"]))
        base = report["_baselines"].get(e["model_version"])
        feature = e["drift"]["feature"]
        if s is None or feature not in s.features:
            continue
        f = s.features.index(feature)
        actual = s.input_counts[f] / max(1, s.input_counts[f].sum())
        labels = [f"<{s.input_edges[0]:g}"] + [f"{x:g}" for x in s.input_edges]
        fig, ax = plt.subplots(figsize=(7, 2.8))
        x = np.arange(len(actual))
        ax.bar(x, actual, width=0.8, alpha=0.6, label=f"{e['device']} (v{e['model_version']})")
        if base is not None:
            ax.step(x, base.expected[f], where="mid", color="black",
                    label=f"expected ({e['drift']['baseline']})")
        ax.set_xticks(x[::2], labels[::2], fontsize=7)
        ax.set_xlabel(f"{feature} (model input, z units)")
        ax.set_title(f"{e['device']}: {feature}, PSI {e['drift']['psi_max']:.3f}", fontsize=9)
        ax.legend(fontsize=7)
        out.append((f"{e['device']}: {feature} against the training distribution", _png(fig)))
        plt.close(fig)
    return out


def _drift_map(plt, report: dict, options) -> list[tuple[str, str]]:
    series, out = report["_series"], []
    rows = sorted(report["devices"], key=lambda e: (not e["drift"]["drifted"],
                                                    -(e["drift"]["psi_max"] or 0)))[:MAP_ROWS]
    features = next((s.features for s in series.values()), [])
    grid = np.array([[e["drift"]["psi"].get(f) if e["drift"]["psi"].get(f) is not None
                      else np.nan for f in features] for e in rows], dtype=float)
    if grid.size:
        fig, ax = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.2))
        image = ax.imshow(grid, aspect="auto", cmap="magma_r", vmin=0,
                          vmax=max(2 * options.psi_limit, float(np.nanmax(grid)) if
                                   np.isfinite(grid).any() else 1.0))
        ax.set_xticks(range(len(features)), features, rotation=30, fontsize=7)
        ax.set_yticks(range(len(rows)), [e["device"] for e in rows], fontsize=7)
        fig.colorbar(image, ax=ax, label="PSI")
        out.append(("Fleet map of drift: PSI by device and feature", _png(fig)))
        plt.close(fig)
    return out


def render(report: dict, options) -> str:
    from edged_cloud.monitor.report import table

    fleet = report["fleet"]
    try:
        figures = plots(report, options)
        missing = ""
    except ImportError:
        figures = []
        missing = ("<p class=warn>No plots: matplotlib is not installed (pip install "
                   "'edged-cloud[train]').</p>")
    esc = html.escape
    summary = "".join(
        f"<li><b>{esc(k)}</b>: {esc(', '.join(v) if isinstance(v, list) else str(v))}</li>"
        for k, v in fleet.items())
    body = "".join(f"<h2>{esc(title)}</h2>{img}" for title, img in figures)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>edged fleet monitor"
            "</title><style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}"
            ".warn{color:#a00}</style></head><body><h1>edged fleet monitor</h1>"
            f"<ul>{summary}</ul>{missing}{body}<h2>Devices</h2>"
            f"<pre>{esc(table(report))}</pre></body></html>\n")
