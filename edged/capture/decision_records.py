"""A pipeline capture record: one sampled decision as a JSON line (schema v1 in
docs/capture.md), and the facts it carries about the clock and the model bundle."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import orjson

from edged.capture.policy import Pick
from edged.plugin.events import Decision

SCHEMA_VERSION = 1
_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised (STA_UNSYNC)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def boot_id() -> str | None:
    """The kernel's id of this boot (a UUID, new at every boot): ``CLOCK_MONOTONIC``
    times, and so sequence numbers, compare only within one boot. None where the file
    is missing (not Linux)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Looked up once: find_library runs ``ldconfig -p`` in a child process each call,
    # which cost 1.3 ms on every spool write.
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def clock_synced() -> bool | None:
    """Whether the kernel considers the system clock synchronised: ``adjtimex(2)`` in
    read-only mode (``modes = 0``) returns ``TIME_ERROR`` while ``STA_UNSYNC`` is set,
    which NTP daemons (chrony, ntpd, systemd-timesyncd) clear once they discipline the
    clock. This is what ``timedatectl`` shows as "System clock synchronized". None where
    the call is unavailable (not Linux)."""
    libc = _libc()
    try:
        timex = ctypes.create_string_buffer(512)  # struct timex is 208 bytes on 64-bit
        state = libc.adjtimex(timex)  # type: ignore[union-attr]  # modes: 0, read only
    except AttributeError:  # no libc, or one without adjtimex
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def manifest_hash(manifest: dict[str, Any] | None) -> str | None:
    """SHA-256 of the model manifest as canonical JSON (sorted keys, no spaces): it
    names every file of the bundle with its own SHA-256, so it identifies the bundle."""
    if not manifest:
        return None
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


# A queued pick: the pick, then (features, thresholds, model info, round monotonic, wall).
Item = tuple[Pick, tuple]

# orjson writes numpy arrays and scalars itself, straight from their buffers: a record
# with a 500 x 6 window encodes about 12x faster than through ``tolist()`` and ``json``,
# and the writer thread that encodes holds the GIL, which the decision loop needs, that
# much less. Tuples are written as arrays; floats as the shortest text that reads back
# the same number in their own precision (float64, or float32 for float32 arrays).
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def _array_fallback(value: object) -> object:
    """What orjson leaves to us: arrays it cannot read in place (a non-contiguous view,
    an unusual dtype) become lists."""
    tolist = getattr(value, "tolist", None)
    if tolist is None:
        raise TypeError(f"cannot encode {type(value).__name__} in a capture record")
    return tolist()


def encode_record(pick: Pick, meta: tuple, pipeline: str, device: str,
                  synced: bool | None) -> bytes:
    """One record as a JSON line (the schema in docs/capture.md)."""
    features, thresholds, model_info, mono, wall = meta
    d: Decision = pick.decision
    window = pick.window
    monotonic = pick.monotonic
    if monotonic is None:
        # A pick no sampler stamped: the round it was queued at, shifted by its age.
        monotonic = mono - (wall - d.time)
    record = {
        "schema": SCHEMA_VERSION,
        "kind": "decision",
        "id": str(uuid.uuid4()),
        "key": f"{d.turbine}:{d.rows}",
        "pipeline": pipeline,
        # Not "device" nor "model": those are the object key's partition columns, and
        # Spark and Athena refuse a table whose data and partitions share a column name.
        "device_id": device,
        "turbine": d.turbine,
        "model_name": d.model.name,
        "model_version": d.model.version,
        "bundle_sha256": model_info.get((d.model.name, d.model.version)),
        "time": d.time,
        "monotonic": monotonic,
        "boot_id": boot_id(),
        "seq": pick.seq,
        "clock_step_s": pick.clock_step_s,
        "clock_synced": synced,
        "rows": d.rows,
        "reasons": pick.reasons,
        "anomalous": d.is_anomalous,
        "primary": d.primary,
        "features": features,
        "values": d.values,
        "thresholds": thresholds,
        "flags": d.anomalous,
        "groups": d.groups,
        "window": window,
    }
    if pick.raw is not None:  # absent, not null, without include_rows: no bytes spent
        record["raw_inputs"] = pick.raw_inputs
        record["raw_rows"] = pick.raw
    if pick.model_io is not None:  # likewise absent without include_model_io
        record["model_input"], record["model_output"] = pick.model_io  # type: ignore[misc]
    return orjson.dumps(record, default=_array_fallback, option=_JSON_OPTIONS)


