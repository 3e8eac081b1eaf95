"""Which signing keys a device accepts model bundles from: the config model.

Apart from :mod:`edged.model.bundle.keys`, which reads the keys it names, so that a
config is read (``edged check-config``, every start) without loading the cryptography
library: a device with no ``cloud:`` section never needs it (about 8 MB of memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints

from edged.plugin.config import Strict

KEY_ID_PATTERN = r"^[0-9a-f]{16}$"


class TrustConfig(Strict):
    """Which signing keys this device accepts model bundles from."""

    keys_dir: Path | None = Field(
        None, description="A directory of trusted public keys (*.pem, *.pub; private "
        "keys there are skipped); drop a file in to trust a key.")
    keys: list[str] = Field(
        default_factory=list,
        description="More trusted public keys: PEM text or paths of PEM files.")
    revoked: list[Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]] = Field(
        default_factory=list,
        description="Key ids (16 hex characters) that are no longer trusted, even if "
        "their key is listed above.")
