"""edged-cloud monitor --heartbeats: a device whose lake is quiet but whose heartbeats
(health reports as JSON lines, gzip'ed or not) still come is not silent; an old heartbeat
does not save it; a device heard only by heartbeat is listed."""

from __future__ import annotations

import gzip
import json

from edged_cloud import cli
from edged_cloud.monitor import synth

START = 1_790_000_000 // 3600 * 3600
HOURS = 12
NOW = START + HOURS * 3600


def report(capsys, *argv) -> dict:
    code = cli.main(["monitor", *map(str, argv), "--now", str(NOW), "--json",
                     "--silent-after", "2h"])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_heartbeats_keep_a_quiet_device_from_silent(tmp_path, capsys):
    devices = [synth.Device(f"dev-{i}") for i in range(3)]
    devices[1].silent_from = devices[2].silent_from = START + 4 * 3600
    lake = tmp_path / "lake"
    synth.write_lake(lake, devices, START, HOURS)
    assert report(capsys, lake)["fleet"]["silent"] == ["dev-1", "dev-2"]

    beats = tmp_path / "beats"
    beats.mkdir()
    (beats / "a.jsonl").write_text("\n".join(json.dumps(b) for b in [
        {"device": "dev-1", "time": NOW - 600},        # recent: heard
        {"device": "dev-2", "time": NOW - 5 * 3600},   # older than --silent-after
        {"device": "dev-2", "time": NOW - 4 * 3600}]) + "\n")
    (beats / "b.jsonl.gz").write_bytes(gzip.compress(
        json.dumps({"device": "dev-9", "time": NOW - 60}).encode() + b"\n"))
    fleet = report(capsys, lake, "--heartbeats", beats)
    assert fleet["fleet"]["silent"] == ["dev-2"]
    by_device = {d["device"]: d for d in fleet["devices"]}
    assert set(by_device) == {"dev-0", "dev-1", "dev-2", "dev-9"}
    assert by_device["dev-9"]["silent"] is False and by_device["dev-9"]["decisions"] == 0
    # last_seen is the heartbeat, last_record still the lake's newest record.
    assert by_device["dev-1"]["last_seen"] > by_device["dev-1"]["last_record"]
