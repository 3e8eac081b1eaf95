"""The dashboard of a real `edged run` process, read with a real HTTP client: every
turbine in /api/state (paged), the injected fault's alarm on /events, the token."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.support import EdgedProcess
from tests.support.farms import FAULTY, faulty_farm

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-dashboard-token"

HEAD = """\
log: {level: info, format: json}
dashboard: {listen: "127.0.0.1:0", token: "${EDGED_DASHBOARD_TOKEN}"}
"""


def config_text(state_dir: Path) -> str:
    return faulty_farm(state_dir, device="dash-gw", turbines=5, head=HEAD)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def sse_records(response: aiohttp.ClientResponse):
    """The JSON of each Server-Sent Event of a stream, as they come."""
    async for line in response.content:
        if line.startswith(b"data: "):
            yield json.loads(line[len(b"data: "):])


async def test_the_dashboard_of_a_running_daemon(tmp_path):
    config = tmp_path / "edged.yaml"
    config.write_text(config_text(tmp_path / "state"))
    with EdgedProcess(config, {"EDGED_DASHBOARD_TOKEN": TOKEN}, cwd=ROOT) as daemon:
        listening = await daemon.wait_for("dashboard_listening", 30)
        assert listening["host"] == "127.0.0.1" and listening["token"] is True
        base = f"http://127.0.0.1:{listening['port']}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": TOKEN}):
                for path in ("/api/state", "/events"):
                    async with http.get(base + path, headers=headers) as response:
                        assert response.status == 401, (path, headers)

            # The alarm comes live over /events (the stream opened before the fault
            # has been seen long enough to alarm: debounce 2 after a full window).
            async with http.get(base + "/events", headers=AUTH) as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"] == "text/event-stream"
                records = sse_records(stream)
                hello = await anext(records)
                assert (hello["event"], hello["device"]) == ("hello", "dash-gw")
                async for record in records:
                    if record["event"] == "alarm":
                        assert record["turbine"] == FAULTY
                        assert "vibration" in record["groups"]
                        break

            async def state(query: str = "") -> dict:
                async with http.get(f"{base}/api/state{query}", headers=AUTH) as response:
                    assert response.status == 200
                    return await response.json()

            page = await state()
            assert page["summary"]["turbines"] == 5
            names = [t["turbine"] for t in page["turbines"]["items"]]
            assert names == [f"turbine-{i}" for i in range(5)]
            faulty = next(t for t in page["turbines"]["items"] if t["turbine"] == FAULTY)
            assert faulty["state"] == "anomaly" and faulty["groups"]["vibration"]
            assert set(faulty["errors"]) == set(faulty["thresholds"]) == set(
                faulty["features"])
            assert faulty["model"] == page["pipelines"]["turbines"]["model"]
            assert page["alarms"][0]["turbine"] == FAULTY
            # What the actuator did with it, once it has (it works beside the round).
            for _ in range(100):
                actions = (await state())["alarms"][0]["actions"]
                if actions:
                    break
                await asyncio.sleep(0.1)
            assert actions == [{"actuator": "operator-log", "ok": True, "error": None}]
            assert page["health"]["decisions_per_s"] > 0
            assert page["health"]["pipelines"]["turbines"]["decisions"] > 0

            # Paged: two at a time, in name order, with the total.
            second = await state("?offset=2&limit=2")
            assert second["turbines"]["total"] == 5
            assert [t["turbine"] for t in second["turbines"]["items"]] == [
                "turbine-2", "turbine-3"]
            async with http.get(f"{base}/api/state?limit=1001", headers=AUTH) as response:
                assert response.status == 400
                assert "limit" in (await response.json())["error"]
