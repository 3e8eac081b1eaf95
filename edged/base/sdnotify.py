"""The systemd notify protocol (sd_notify(3)) in the standard library.

systemd passes a Unix datagram socket in ``$NOTIFY_SOCKET`` (a path, or an abstract
socket written ``@name``); a service reports its state by sending newline-separated
``KEY=value`` fields there. Without ``$NOTIFY_SOCKET`` (a terminal, a container, the
tests) every call is a no-op that returns False, so callers never check where they run.

The watchdog is armed by ``WatchdogSec=``: systemd sets ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``, the process meant to ping) and restarts the service when no
``WATCHDOG=1`` arrives within that interval.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("edged.base.sdnotify")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state changes to the service manager; a no-op without a socket address.

    Built from the environment by :meth:`from_environ`; tests inject their own.
    """

    def __init__(self, address: str | None = None, *, watchdog_usec: str | None = None,
                 watchdog_pid: str | None = None) -> None:
        self.address = address or None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_usec=environ.get("WATCHDOG_USEC"),
                   watchdog_pid=environ.get("WATCHDOG_PID"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (each ``KEY=value``) as one datagram; True if it was sent."""
        if self.address is None or not fields:
            return False
        if self.address.startswith("@"):
            # An abstract socket: no file, the name begins with a NUL byte.
            target = "\0" + self.address[1:]
        elif self.address.startswith("/"):
            target = self.address
        else:  # e.g. the vsock: addresses systemd passes into VMs; not a device's case
            log.warning("notify_socket_unsupported", address=self.address)
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the event loop: systemd drains its socket at once, and a
                # full queue is better reported than waited on.
                sock.setblocking(False)
                sock.sendto(message, target)
        except OSError as exc:
            log.warning("notify_failed", address=self.address, fields=list(fields),
                        error=repr(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload begins. MONOTONIC_USEC lets systemd ≥ 253 tie this message to the
        reload it asked for (``Type=notify-reload``); older versions ignore it. READY=1
        must follow, whatever the outcome."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                           *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown begins."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line state shown by ``systemctl status``."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """Still alive: resets the watchdog timer."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """The watchdog's timeout in seconds, or None when it is not armed for this
        process. Ping at half of it, so one late ping is not fatal."""
        if self.address is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None  # meant for another process (we were forked or exec'd)
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None


def _status(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    # One field per line: a newline in the text would start a field of its own.
    return (f"STATUS={' '.join(text.split())}",)



# Module-level helpers read the environment on each call, as sd_notify(3) does.
def notify(*fields: str) -> bool:
    """Send ``fields`` to ``$NOTIFY_SOCKET``; False (and nothing sent) without it."""
    return Notifier.from_environ().notify(*fields)


def ready(status: str | None = None) -> bool:
    return Notifier.from_environ().ready(status)


def reloading(status: str | None = None) -> bool:
    return Notifier.from_environ().reloading(status)


def stopping(status: str | None = None) -> bool:
    return Notifier.from_environ().stopping(status)


def status(text: str) -> bool:
    return Notifier.from_environ().status(text)


def watchdog() -> bool:
    return Notifier.from_environ().watchdog()


def watchdog_interval() -> float | None:
    return Notifier.from_environ().watchdog_interval()
