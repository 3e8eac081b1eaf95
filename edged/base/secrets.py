"""``${NAME}`` secret references: where a config's secret is read from.

First a systemd credential, the file ``$CREDENTIALS_DIRECTORY/NAME`` (``LoadCredential=``,
``LoadCredentialEncrypted=``; systemd >= 247), then the environment variable ``NAME``
(``EnvironmentFile=``). The credential comes first because it is the deliberate channel:
readable by the service alone, never inherited by the programs it starts, and never shown
by ``systemctl show`` the way ``Environment=`` is.

A credential file is read under a bound (:data:`MAX_SECRET_BYTES`) and must be UTF-8; one
trailing newline (an ``echo`` into the file) is not part of the secret. A file that
exists but cannot be read is an error naming the file, never a fallback to the
environment: the operator meant that file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edged.base.durable import read_at_most
from edged.base.errors import EdgedError

#: ``${NAME}``: the whole value names a secret. NAME: letters, digits, underscore.
SECRET_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Largest credential file read; a password, token or key is far smaller. systemd's own
#: bound on a credential is 1 MiB.
MAX_SECRET_BYTES = 64 * 1024
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SecretError(EdgedError):
    """A secret reference that cannot be resolved; the message names what was tried
    (never the secret's value)."""


def resolve_secret(name: str) -> str:
    """The value of secret ``name``: the credential file ``$CREDENTIALS_DIRECTORY/NAME``
    if there is one, else the environment variable ``NAME``; SecretError otherwise."""
    if not SECRET_REFERENCE.fullmatch(f"${{{name}}}"):
        raise SecretError(f"{name!r} is not a secret name (letters, digits, underscore)")
    directory = os.environ.get(CREDENTIALS_ENV)
    if directory:
        value = _credential(Path(directory) / name)
        if value is not None:
            return value
    if name in os.environ:
        return os.environ[name]
    if directory:
        raise SecretError(f"{name} is neither a credential in ${CREDENTIALS_ENV} "
                          f"({directory}) nor an environment variable")
    raise SecretError(f"environment variable {name} is not set (nor a systemd credential: "
                      f"no ${CREDENTIALS_ENV})")


def _credential(path: Path) -> str | None:
    """The credential at ``path``, None if there is no such file."""
    try:
        data = read_at_most(path, MAX_SECRET_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretError(f"cannot read credential {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"credential {path} is over the limit of {MAX_SECRET_BYTES:,} "
                          "bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretError(f"credential {path} is not UTF-8 (byte {exc.start:,})") from None
    return text.removesuffix("\n").removesuffix("\r")
