"""The training report's plots: loss curves, and held-out errors against the thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edged.windturbine.layout import FEATURES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def loss_plot(path: Path, train_loss: list[float], val_loss: list[float],
              best_epoch: int) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(train_loss) + 1)
    ax.plot(epochs, train_loss, label="training")
    ax.plot(epochs, val_loss, label="validation")
    ax.axvline(best_epoch + 1, color="grey", linestyle=":", label="kept")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def error_plot(path: Path, by_label: dict[str, np.ndarray], thresholds: np.ndarray) -> None:
    """Per feature, a histogram of the decisions' errors per label (log scale: faults sit
    orders of magnitude above the healthy errors) and the threshold."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    values = np.concatenate([v for v in by_label.values() if len(v)] or [np.ones((1, 6))])
    low = max(float(values[values > 0].min(initial=1e-3)), 1e-6)
    high = max(float(values.max()), float(thresholds.max())) * 1.1
    bins = np.geomspace(low, high, 50)
    for f, ax in enumerate(axes.flat):
        for label, errors in by_label.items():
            if len(errors):
                ax.hist(np.maximum(errors[:, f], low), bins=bins, alpha=0.6, label=label)
        ax.axvline(thresholds[f], color="black", linestyle="--", label="threshold")
        ax.set_xscale("log")
        ax.set_title(FEATURES[f])
        ax.set_xlabel("mean absolute error")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Held-out decisions: reconstruction error against the threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
