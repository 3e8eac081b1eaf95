"""The simulator's controls on the dashboard: the request (``parse_control``, bounded,
strict, any bytes a control or a named refusal), its checks against the source's kinds,
and ``POST /api/simulator/SOURCE/TURBINE`` over TCP to a real server in process, with a
farm that records what it was told."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters
from edged.config import DashboardSpec
from edged.dashboard.board import TurbineBoard
from edged.dashboard.controls import (
    MAX_CONTROL_BYTES,
    Control,
    FarmControl,
    parse_control,
)
from edged.dashboard.server import DashboardServer
from edged.watch.feed import EventFeed

# -- the request ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "control"), [
    (b'{"running": true}', Control("running", "", True)),
    (b'{"running": false}', Control("running", "", False)),
    (b'{"fault": "vibration", "on": true}', Control("fault", "vibration", True)),
    (b'{"on": false, "fault": "voltage"}', Control("fault", "voltage", False)),
    (b'{"drift": "bias", "on": true}', Control("drift", "bias", True)),
    (b' {"drift":"wind","on":false}\n', Control("drift", "wind", False)),
    # A kind the source does not have is the source's to refuse (Control.apply).
    (b'{"fault": "fire", "on": true}', Control("fault", "fire", True)),
])
def test_every_form_of_control_is_read(body, control):
    assert parse_control(body) == control


@pytest.mark.parametrize(("body", "named"), [
    (b"{}", "not one with keys []"),
    (b'{"running": true, "on": true}', "keys ['on', 'running']"),
    (b'{"fault": "vibration"}', "keys ['fault']"),
    (b'{"fault": "vibration", "drift": "bias"}', "keys ['drift', 'fault']"),
    (b'{"drift": "bias", "on": true, "for": 5}', "keys ['drift', 'for', 'on']"),
    (b'{"running": 1}', "running must be true or false, not '1'"),
    (b'{"running": "true"}', "running must be true or false, not 'true'"),
    (b'{"fault": "rotation", "on": null}', "on must be true or false, not 'None'"),
    (b'{"fault": 3, "on": true}', "fault must be a string, not int"),
    (b'{"drift": false, "on": true}', "drift must be a string, not bool"),
    (b'{"fault": ["vibration"], "on": true}', "nested deeper than 1 levels"),
    (b'{"running": {"on": true}}', "nested deeper than 1 levels"),
    (b'{"running": true, "running": false}', "key 'running' appears twice"),
    (b'{"fault": "vibration", "on": true, "on": false}', "key 'on' appears twice"),
    (b'{"fault": "\xffvibration", "on": true}', "not UTF-8 at byte 11"),
    (b"[true]", "a control is a JSON object"),
    (b'"running"', "a control is a JSON object"),
    (b"", "not JSON"),
    (b'{"running": tru}', "not JSON"),
    (b'{"running": true, "pad": "' + b"x" * MAX_CONTROL_BYTES + b'"}',
     f"over the limit of {MAX_CONTROL_BYTES}"),
])
def test_a_refused_control_names_the_problem(body, named):
    with pytest.raises(ValueError) as refused:
        parse_control(body)
    assert named in str(refused.value)


def test_the_bound_is_on_the_bytes():
    fits = b'{"fault": "vibration", "on": true}'
    padded = fits[:-1] + b" " * (MAX_CONTROL_BYTES - len(fits)) + b"}"
    assert len(padded) == MAX_CONTROL_BYTES
    assert parse_control(padded) == Control("fault", "vibration", True)
    with pytest.raises(ValueError, match=f"{MAX_CONTROL_BYTES + 1} bytes is over"):
        parse_control(padded + b" ")


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_KEYS = st.sampled_from(["running", "fault", "drift", "on", "kind"]) | st.text(max_size=8)
_DOCUMENTS = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=8)


@pytest.mark.fuzz
@given(st.binary(max_size=2 * MAX_CONTROL_BYTES)
       | _DOCUMENTS.map(lambda d: json.dumps(d).encode())
       | st.builds(lambda d, cut: json.dumps(d).encode()[:cut], _DOCUMENTS,
                   st.integers(0, 40)))
def test_any_bytes_are_a_control_or_a_named_refusal(body):
    try:
        control = parse_control(body)
    except ValueError as exc:
        assert str(exc)
    else:
        assert control.what in ("running", "fault", "drift")
        assert isinstance(control.on, bool) and isinstance(control.kind, str)
        assert len(body) <= MAX_CONTROL_BYTES


# -- a farm that records what it is told ---------------------------------------------------


class RecordingFarm:
    """The :class:`FarmControl` protocol over three turbines, each call recorded."""

    fault_kinds = ("vibration", "rotation", "voltage")
    drift_kinds = ("bias", "bearing", "wind")

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.stopped: set[str] = set()
        self.faults: dict[str, set[str]] = {}
        self.drifts: dict[str, set[str]] = {}

    def turbine_ids(self) -> list[str]:
        return ["turbine-0", "turbine-1", "turbine-2"]

    def running(self, turbine: str) -> bool:
        return turbine not in self.stopped

    def active(self, turbine: str) -> tuple[list[str], list[str]]:
        return sorted(self.faults.get(turbine, ())), sorted(self.drifts.get(turbine, ()))

    def set_running(self, turbine: str, running: bool) -> None:
        self.calls.append(("running", turbine, running))
        (self.stopped.discard if running else self.stopped.add)(turbine)

    def set_fault(self, turbine: str, kind: str, on: bool) -> None:
        self.calls.append(("fault", turbine, kind, on))
        kinds = self.faults.setdefault(turbine, set())
        (kinds.add if on else kinds.discard)(kind)

    def set_drift(self, turbine: str, kind: str, on: bool) -> None:
        self.calls.append(("drift", turbine, kind, on))
        kinds = self.drifts.setdefault(turbine, set())
        (kinds.add if on else kinds.discard)(kind)


def test_the_recording_farm_is_a_farm_control():
    # As the assembly finds a source's controls: by the protocol, at run time.
    assert isinstance(RecordingFarm(), FarmControl)


@pytest.mark.parametrize(("control", "named"), [
    (Control("fault", "fire", True), "fault must be one of vibration, rotation, voltage, "
                                     "not 'fire'"),
    (Control("drift", "vibration", True), "drift must be one of bias, bearing, wind, "
                                          "not 'vibration'"),
])
def test_apply_refuses_a_kind_the_source_lacks_naming_its_kinds(control, named):
    farm = RecordingFarm()
    with pytest.raises(ValueError) as refused:
        control.apply(farm, "turbine-1")
    assert str(refused.value) == named
    assert farm.calls == []


def test_apply_tells_the_farm():
    farm = RecordingFarm()
    for control in (Control("running", "", False), Control("fault", "rotation", True),
                    Control("drift", "wind", False)):
        control.apply(farm, "turbine-2")
    assert farm.calls == [("running", "turbine-2", False),
                          ("fault", "turbine-2", "rotation", True),
                          ("drift", "turbine-2", "wind", False)]


# -- POST /api/simulator/SOURCE/TURBINE ----------------------------------------------------


def serve(counters: Counters, farm: RecordingFarm) -> DashboardServer:
    spec = DashboardSpec(listen="127.0.0.1:0")
    board = TurbineBoard("gw-7", {}, controls={"farm": farm})
    return DashboardServer(spec, board, EventFeed("gw-7", counters, 8), counters)


def url(server: DashboardServer, path: str = "farm/turbine-1") -> str:
    return f"http://127.0.0.1:{server.address[1]}/api/simulator/{path}"


async def test_a_control_reaches_the_farm_and_answers_its_status():
    counters, farm = Counters(), RecordingFarm()
    async with serve(counters, farm) as server, aiohttp.ClientSession() as http:
        version = server.board.version
        async with http.post(url(server), json={"fault": "vibration", "on": True}) as answer:
            assert answer.status == 200
            assert await answer.json() == {"source": "farm", "running": True,
                                           "faults": ["vibration"], "drifts": []}
        assert server.board.version > version  # streams send the board anew
        async with http.post(url(server), json={"drift": "bearing", "on": True}) as answer:
            assert (await answer.json())["drifts"] == ["bearing"]
        async with http.post(url(server, "farm/turbine-2"), json={"running": False}) as answer:
            assert await answer.json() == {"source": "farm", "running": False,
                                           "faults": [], "drifts": []}
        async with http.post(url(server), json={"fault": "vibration", "on": False}) as answer:
            assert (await answer.json())["faults"] == []
    assert farm.calls == [("fault", "turbine-1", "vibration", True),
                          ("drift", "turbine-1", "bearing", True),
                          ("running", "turbine-2", False),
                          ("fault", "turbine-1", "vibration", False)]
    assert counters.get("dashboard_controls", what="fault") == 2
    assert counters.get("dashboard_controls", what="drift") == 1
    assert counters.get("dashboard_controls", what="running") == 1


async def test_an_unknown_source_or_turbine_is_404_and_counted():
    counters, farm = Counters(), RecordingFarm()
    async with serve(counters, farm) as server, aiohttp.ClientSession() as http:
        for path, named in (("other/turbine-1", "no simulator source 'other'"),
                            ("farm/turbine-9", "no turbine 'turbine-9' in source 'farm'")):
            async with http.post(url(server, path), json={"running": False}) as answer:
                assert answer.status == 404
                assert (await answer.json())["error"] == named
    assert farm.calls == []
    assert counters.get("dashboard_requests_refused", reason="not_found") == 2
    assert counters.get("dashboard_controls", what="running") == 0


async def test_a_control_from_another_site_is_403():
    """A form on another site can send neither JSON nor this origin: both refused,
    counted as unauthorized; the page's own origin (or none, from a script) is served."""
    counters, farm = Counters(), RecordingFarm()
    body = b'{"running": false}'
    async with serve(counters, farm) as server, aiohttp.ClientSession() as http:
        own = f"http://127.0.0.1:{server.address[1]}"
        for headers, named in (
                ({"Content-Type": "text/plain"}, "Content-Type: application/json"),
                ({"Content-Type": "application/x-www-form-urlencoded"},
                 "Content-Type: application/json"),
                ({"Content-Type": "application/json", "Origin": "http://evil.example"},
                 "another origin ('http://evil.example')"),
                ({"Content-Type": "application/json",
                  "Origin": f"http://127.0.0.1:{server.address[1] + 1}"}, "another origin"),
                # A sandboxed frame's origin is "null".
                ({"Content-Type": "application/json", "Origin": "null"}, "another origin")):
            async with http.post(url(server), data=body, headers=headers) as answer:
                assert answer.status == 403, headers
                assert named in (await answer.json())["error"]
        assert farm.calls == []
        assert counters.get("dashboard_requests_refused", reason="unauthorized") == 5
        async with http.post(url(server), data=body, headers={
                "Content-Type": "application/json", "Origin": own}) as answer:
            assert answer.status == 200
        async with http.post(url(server), data=body, headers={
                "Content-Type": "application/json; charset=utf-8"}) as answer:
            assert answer.status == 200
    assert farm.calls == [("running", "turbine-1", False)] * 2


async def test_a_bad_control_is_400_naming_it():
    counters, farm = Counters(), RecordingFarm()
    json_type = {"Content-Type": "application/json"}
    async with serve(counters, farm) as server, aiohttp.ClientSession() as http:
        for body, named in (
                (b'{"running": true, "pad": "' + b"x" * 300 + b'"}',
                 f"over the limit of {MAX_CONTROL_BYTES}"),
                (b'{"running": ' + b" " * 100_000 + b"true}",  # far over; read no further
                 f"over the limit of {MAX_CONTROL_BYTES}"),
                (b"{running: true}", "not JSON"),
                (b'{"running": "yes"}', "running must be true or false"),
                (b'{"fault": "fire", "on": true}', "fault must be one of vibration, "
                                                   "rotation, voltage, not 'fire'")):
            async with http.post(url(server), data=body, headers=json_type) as answer:
                assert answer.status == 400, body[:40]
                error = (await answer.json())["error"]
                assert error.startswith("control of turbine-1: ") and named in error, error
    assert farm.calls == []
    assert counters.get("dashboard_requests_refused", reason="bad_request") == 5
    assert sum(counters.get("dashboard_controls", what=w)
               for w in ("running", "fault", "drift")) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_control_that_arrives_in_parts_is_read_whole(chunked):
    """The body's second half is sent after the server has read the first: a read
    that took what had arrived as the whole body refused a valid control."""
    counters, farm = Counters(), RecordingFarm()
    body = b'{"fault": "rotation", "on": true}'
    head = (b"POST /api/simulator/farm/turbine-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n")
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        first, second = b"8\r\n" + body[:8] + b"\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (
            len(body) - 8, body[8:])
    else:
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        first, second = body[:8], body[8:]
    async with serve(counters, farm) as server:
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(head + first)
        await writer.drain()
        await asyncio.sleep(0.2)  # the first half has come in alone
        writer.write(second)
        await writer.drain()
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert farm.calls == [("fault", "turbine-1", "rotation", True)]
