"""What an open dashboard costs the daemon, at 1,000 turbines.

    .venv/bin/python benchmarks/open_page.py [--turbines 1000] [--phase-s 20] [--pages 1 4]

Two measurements:

- in process: the board's ``on_round`` per 1,000 decisions (in the decision path), and
  one board event as a page's stream sends it once a second (a page of 60 turbines, a
  focus turbine with its history, JSON-encoded);
- end to end: a real ``edged run`` deciding ``--turbines`` simulated turbines (20 Hz,
  twice a second) with the dashboard on, first with no page open, then with each count
  of ``--pages`` open (each page is what the browser keeps open: the stream of
  ``/events?decisions=none&board=1&limit=60&focus=...``, read as it comes). Per phase:
  decisions/s, the decision round's latency (p50/p99, from the daemon's health), and the
  daemon's CPU; each as a ratio to the phases without a page, run between the others.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402
from benchmarks.watch import FEATURES, a_round  # noqa: E402
from edged.dashboard.board import TurbineBoard  # noqa: E402
from tests.support import EdgedProcess  # noqa: E402
from tests.support.farms import faulty_farm  # noqa: E402

PAGE = 60


def a_pipeline(turbines: int) -> SimpleNamespace:
    """What the board reads off a pipeline, for ``turbines`` turbines all just seen."""
    return SimpleNamespace(
        buffers=SimpleNamespace(names=[f"turbine-{i}" for i in range(turbines)],
                                last_seen=np.full(turbines, time.monotonic())),
        spec=SimpleNamespace(stale_after_s=5.0, max_turbines=10_000),
        backend=SimpleNamespace(model=SimpleNamespace(name="windturbine", version=1)),
        shadow=None)


def in_process(turbines: int, rounds: int) -> dict[str, float]:
    board = TurbineBoard("bench", {"turbines": a_pipeline(turbines)})
    window = np.random.default_rng(1).random((turbines, 1, len(FEATURES)))
    # Rounds made beforehand and handed over in turn: the board's cost, not the cost of
    # making (or freeing) decisions, which a pipeline pays with or without a board.
    made = []
    for n in range(20):
        base = a_round(turbines, 100, 1000.0 + n * 0.5)
        made.append(replace(base, window=window,
                            values=np.array([d.values for d in base.decisions])))
    per_round = []
    for n in range(rounds):
        started = time.perf_counter()
        board.on_round(made[n % len(made)])
        per_round.append(time.perf_counter() - started)
    pushes = []
    for _ in range(50):
        started = time.perf_counter()
        orjson.dumps(board.state(time.monotonic(), 0, PAGE, None, ("turbines", "turbine-7")),
                     option=orjson.OPT_SERIALIZE_NUMPY)
        pushes.append(time.perf_counter() - started)
    return {"on_round_us_per_1000": statistics.median(per_round) * 1e6 * 1000 / turbines,
            "board_event_ms": statistics.median(pushes) * 1e3}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def read_page(base: str, turbine: int, stop: asyncio.Event) -> int:
    """One open page: its HTML and assets once, then its stream; returns board events."""
    boards = 0
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
            async with http.get(base + path) as response:
                await response.read()
        query = f"decisions=none&board=1&limit={PAGE}&focus=turbines/turbine-{turbine}"
        async with http.get(f"{base}/events?{query}") as stream:
            while not stop.is_set():
                line = await stream.content.readline()
                boards += line.startswith(b'data: {"event":"board"')
    return boards


async def phase(daemon: EdgedProcess, base: str, pages: int, seconds: float) -> dict:
    async def health() -> dict:
        async with aiohttp.ClientSession() as http, \
                http.get(f"{base}/api/state?limit=1") as response:
            return (await response.json())["health"]["pipelines"]["turbines"]

    stop = asyncio.Event()
    readers = [asyncio.create_task(read_page(base, i * 97, stop)) for i in range(pages)]
    await asyncio.sleep(2.0)  # pages opened and streaming before the clock starts
    first, cpu0, t0 = await health(), cpu_seconds(daemon.proc.pid), time.monotonic()
    await asyncio.sleep(seconds)
    last, cpu1, t1 = await health(), cpu_seconds(daemon.proc.pid), time.monotonic()
    stop.set()  # each page ends at its next line: a board comes every second
    boards = sum(await asyncio.wait_for(asyncio.gather(*readers), 30))
    return {"pages": pages, "decisions_per_s": (last["decisions"] - first["decisions"])
            / (t1 - t0), "latency_ms": last["latency_ms"], "cpu": (cpu1 - cpu0) / (t1 - t0),
            "boards_per_s": boards / max(pages, 1) / (time.monotonic() - t0 + 2.0)}


async def end_to_end(turbines: int, pages: list[int], seconds: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "edged.yaml"
        config.write_text(faulty_farm(
            Path(tmp) / "state", device="bench-gw", turbines=turbines,
            head='log: {level: info, format: json, decisions: none}\n'
                 'dashboard: {listen: "127.0.0.1:0"}\n'))
        with EdgedProcess(config, cwd=ROOT) as daemon:
            listening = await daemon.wait_for("dashboard_listening", 60)
            base = f"http://127.0.0.1:{listening['port']}"
            await asyncio.sleep(5.0)  # past the history's first rounds
            # No page between every other phase: a drift of the machine (or of the
            # daemon as it warms up) shows as a spread of the baselines.
            results = [await phase(daemon, base, 0, seconds)]
            for count in pages:
                results.append(await phase(daemon, base, count, seconds))
                results.append(await phase(daemon, base, 0, seconds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turbines", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--pages", type=int, nargs="*", default=[1, 4])
    args = parser.parse_args()
    print(f"# {cpu_name()}, {os.cpu_count()} cores; {args.turbines} turbines")
    cost = in_process(args.turbines, args.rounds)
    print(f"in process: on_round {cost['on_round_us_per_1000']:.0f} µs per 1,000 decisions; "
          f"one board event (60 turbines + focus, JSON) {cost['board_event_ms']:.2f} ms")
    results = asyncio.run(end_to_end(args.turbines, args.pages, args.phase_s))
    baselines = [r for r in results if r["pages"] == 0]
    base = {key: statistics.mean(r[key] for r in baselines)
            for key in ("decisions_per_s", "cpu")}
    print(f"\nend to end, {args.phase_s:.0f} s a phase (ratio: to the mean of the phases "
          "without a page, run between the others)")
    print(f"{'pages':>5} {'decisions/s':>12} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cpu':>6} {'ratio':>6} {'boards/s/page':>13}")
    for r in results:
        latency = r["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
        print(f"{r['pages']:>5} {r['decisions_per_s']:>12.0f} "
              f"{r['decisions_per_s'] / base['decisions_per_s']:>6.3f} "
              f"{latency['p50']:>7.2f} {latency['p99']:>7.2f} {r['cpu']:>6.1%} "
              f"{r['cpu'] / base['cpu']:>6.2f} {r['boards_per_s']:>13.2f}")


if __name__ == "__main__":
    main()
