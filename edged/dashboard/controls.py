"""What the page may do to a simulated farm: start and stop its turbines, and switch
each fault and drift on and off (docs/dashboard.md, "Simulator controls").

A source that has these controls (the built-in ``simulator``) is handed to the
dashboard by the assembly as a :class:`FarmControl`; the dashboard never imports a
source. A request is one small JSON object, read by :func:`parse_control` within
:data:`MAX_CONTROL_BYTES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from edged.base.strict_json import loads

#: Largest control request read: the longest valid one is under 40 bytes.
MAX_CONTROL_BYTES = 256


@runtime_checkable
class FarmControl(Protocol):
    """A source whose turbines the page can start, stop and break."""

    fault_kinds: tuple[str, ...]
    drift_kinds: tuple[str, ...]

    def turbine_ids(self) -> Sequence[str]: ...

    def running(self, turbine: str) -> bool: ...

    def active(self, turbine: str) -> tuple[list[str], list[str]]:
        """The kinds of fault and of drift acting on ``turbine`` now."""
        ...

    def set_running(self, turbine: str, running: bool) -> None: ...

    def set_fault(self, turbine: str, kind: str, on: bool) -> None: ...

    def set_drift(self, turbine: str, kind: str, on: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Control:
    """One request: ``what`` is ``running`` (``kind`` empty), ``fault`` or ``drift``."""

    what: Literal["running", "fault", "drift"]
    kind: str
    on: bool

    def apply(self, control: FarmControl, turbine: str) -> None:
        if self.what == "running":
            control.set_running(turbine, self.on)
            return
        kinds = control.fault_kinds if self.what == "fault" else control.drift_kinds
        if self.kind not in kinds:
            raise ValueError(f"{self.what} must be one of {', '.join(kinds)}, "
                             f"not {self.kind[:40]!r}")
        (control.set_fault if self.what == "fault" else control.set_drift)(
            turbine, self.kind, self.on)


def parse_control(body: bytes) -> Control:
    """``{"running": true|false}``, ``{"fault": KIND, "on": true|false}`` or
    ``{"drift": KIND, "on": true|false}``; ValueError naming what is wrong."""
    document = loads(body, max_bytes=MAX_CONTROL_BYTES, max_depth=1)
    if not isinstance(document, dict):
        raise ValueError("a control is a JSON object")
    keys = set(document)
    if keys == {"running"}:
        return Control("running", "", _flag(document, "running"))
    for what in ("fault", "drift"):
        if keys == {what, "on"}:
            kind = document[what]
            if not isinstance(kind, str):
                raise ValueError(f"{what} must be a string, not {type(kind).__name__}")
            return Control(what, kind, _flag(document, "on"))
    raise ValueError('a control is {"running": BOOL}, {"fault": KIND, "on": BOOL} or '
                     f'{{"drift": KIND, "on": BOOL}}, not one with keys {sorted(keys)[:4]}')


def _flag(document: dict[str, Any], key: str) -> bool:
    value = document[key]
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {str(value)[:40]!r}")
    return value


def farm_status(source: str, control: FarmControl, turbine: str) -> dict[str, Any]:
    """A turbine's controls as the page shows them."""
    faults, drifts = control.active(turbine)
    return {"source": source, "running": control.running(turbine), "faults": faults,
            "drifts": drifts}
