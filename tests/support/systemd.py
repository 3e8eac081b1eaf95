"""Reading systemd unit files: for tests that hold a shipped unit to its promises."""

from __future__ import annotations

from pathlib import Path


def unit_directives(unit: Path, section: str = "Service") -> list[tuple[str, str]]:
    """A systemd unit file's KEY=value lines of one section, in order (keys may repeat):
    for tests that hold a shipped unit to its promises."""
    current, found = None, []
    for raw in Path(unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            found.append((key, value))
    return found


def unit_directive(unit: Path, key: str, section: str = "Service") -> str:
    """The one value of ``key``; fails if it is missing or repeated."""
    values = [v for k, v in unit_directives(unit, section) if k == key]
    if len(values) != 1:
        raise AssertionError(f"{unit}: [{section}] {key}= appears {len(values)} times")
    return values[0]
