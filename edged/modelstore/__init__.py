"""The model store: versioned slots of model directories under the state directory, one
current and one previous (last-known-good), switched by one atomic write.

Design: docs/model-store.md.
"""

from edged.modelstore.errors import StoreError, SwapError
from edged.modelstore.store import STORE_PREFIX, ModelStore, Slot, builtin_model, stores

__all__ = ["STORE_PREFIX", "ModelStore", "Slot", "StoreError", "SwapError", "builtin_model",
           "stores"]
