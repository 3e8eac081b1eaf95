"""The model store's errors (subclasses of edged's ModelError, so callers that already
handle model problems handle these too)."""

from __future__ import annotations

from edged.base.errors import ModelError


class StoreError(ModelError):
    """A model store operation is impossible (no such slot, nothing to roll back to)."""


class SwapError(ModelError):
    """A new model was not swapped in; the running one is untouched."""
