"""The reference autoencoder (docs/windturbine.md, "Model"), defined once: training builds
it, and the converter checks the workshop's pickled model against it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edged.windturbine.layout import FEATURES

if TYPE_CHECKING:
    import torch


def autoencoder(dropout: float = 0.0, features: int = len(FEATURES)) -> torch.nn.Sequential:
    """The workshop's ``nn.Sequential``, layer for layer, so its ``state_dict`` keys
    (``0.weight``, ``3.weight``, ...) are the workshop model's. Input and output
    ``(n, features, 10, 10)``."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(features, 32, kernel_size=2, padding=1),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Conv2d(32, 64, kernel_size=2, padding=1),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Conv2d(64, 128, kernel_size=2, padding=2),
        nn.ReLU(),
        nn.ConvTranspose2d(128, 64, kernel_size=2, padding=2),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.ConvTranspose2d(64, 32, kernel_size=2, padding=1),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.ConvTranspose2d(32, features, kernel_size=2, padding=1),
    )
