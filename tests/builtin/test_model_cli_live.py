"""A running daemon serves what ``edged model install`` and ``rollback`` make current,
at once and without a reload, and the command says so: a real ``edged run`` process, real
signed bundles, the real command."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from edged.model.serving import read_serving
from edged.model.store import ModelStore
from tests.support import EdgedProcess
from tests.support.model_cli import edged_cli, signed_bundle, store_config


async def serving(state: Path, within: float = 60) -> dict:
    """serving.json, once the daemon has written it."""
    deadline = time.monotonic() + within
    while (record := read_serving(state)) is None:
        assert time.monotonic() < deadline, f"no {state / 'serving.json'}"
        await asyncio.sleep(0.05)
    return record


async def cli(*args: str) -> object:
    # In a thread: the daemon's log reader and this loop go on while the command waits.
    return await asyncio.to_thread(edged_cli, *args)


@pytest.fixture
def device(tmp_path):
    state = tmp_path / "state"
    config = tmp_path / "edged.yaml"
    config.write_text(store_config(state))
    return config, state


async def test_install_and_rollback_are_served_at_once(tmp_path, device):
    config, state = device
    keys = tmp_path / "keys"
    bundle = signed_bundle(tmp_path, 2, keys)
    with EdgedProcess(config) as daemon:
        await daemon.wait_for("graph_started", 60)
        first = await serving(state)
        assert first["pid"] == daemon.proc.pid
        v1 = ModelStore.for_model(state, "windturbine").current()
        assert first["pipelines"]["turbines"] == {
            "store": "windturbine", "model": "windturbine", "version": 1, "slot": v1.name,
            "refused": None}

        done = await cli("model", "install", str(bundle), "--trust", str(keys), "-c",
                         str(config))
        assert done.returncode == 0, done.stderr
        v2 = ModelStore.for_model(state, "windturbine").current()
        assert v2.version == 2
        assert (f"the running daemon (pid {daemon.proc.pid}) now serves windturbine slot "
                f"{v2.name} (version 2)") in done.stdout, done.stdout
        swapped = await daemon.wait_for("model_swapped")
        assert (swapped["pipeline"], swapped["slot"], swapped["version"],
                swapped["previous_version"]) == ("turbines", v2.name, 2, 1)

        done = await cli("model", "rollback", "windturbine", "-c", str(config))
        assert done.returncode == 0, done.stderr
        assert (f"the running daemon (pid {daemon.proc.pid}) now serves windturbine slot "
                f"{v1.name} (version 1)") in done.stdout, done.stdout
        assert [(e["slot"], e["version"]) for e in daemon.events("model_swapped")] == [
            (v2.name, 2), (v1.name, 1)]
        assert not daemon.events("config_reloaded")  # no SIGHUP was needed
        assert daemon.stop() == 0

    # serving.json stays behind, but names a process that is gone.
    done = await cli("model", "install", str(signed_bundle(tmp_path, 3, keys, name="v3")),
                     "--trust", str(keys), "-c", str(config))
    assert done.returncode == 0, done.stderr
    v3 = ModelStore.for_model(state, "windturbine").current()
    assert (f"no running daemon serves {state}: edged serves windturbine slot {v3.name} "
            "from its next start") in done.stdout


async def test_a_refused_swap_is_reported_and_the_daemon_keeps_its_model(tmp_path, device):
    config, state = device
    keys = tmp_path / "keys"
    # Signed and verified like any other, but its 600-row history needs new buffers:
    # a reload, not a hot swap.
    bundle = signed_bundle(tmp_path, 2, keys, buffer=600)
    with EdgedProcess(config) as daemon:
        await daemon.wait_for("graph_started", 60)
        v1 = (await serving(state))["pipelines"]["turbines"]["slot"]

        done = await cli("model", "install", str(bundle), "--trust", str(keys), "-c",
                         str(config))
        assert done.returncode == 1, done.stdout + done.stderr
        v2 = ModelStore.for_model(state, "windturbine").current()
        assert v2.version == 2  # the store took it
        assert (f"the running daemon (pid {daemon.proc.pid}) refused to swap windturbine "
                f"slot {v2.name} into pipeline turbines: the new model's preprocessing "
                "changes 'history'") in done.stderr, done.stderr
        assert f"it keeps serving slot {v1} (version 1)" in done.stderr
        assert "`edged model rollback windturbine`" in done.stderr

        refused = await daemon.wait_for("model_swap_refused")
        assert (refused["slot"], refused["serving"]) == (v2.name, v1)
        assert not daemon.events("model_swapped")
        assert (await serving(state))["pipelines"]["turbines"]["slot"] == v1
        assert daemon.proc.poll() is None

        # Making the store agree with the daemon again needs no swap.
        done = await cli("model", "rollback", "windturbine", "-c", str(config))
        assert done.returncode == 0, done.stderr
        assert f"now serves windturbine slot {v1} (version 1)" in done.stdout
        assert not daemon.events("model_swapped")
        assert daemon.stop() == 0


async def test_a_daemon_that_does_not_answer_in_time_is_named(tmp_path, device):
    config, state = device
    keys = tmp_path / "keys"
    bundle = signed_bundle(tmp_path, 2, keys)
    with EdgedProcess(config) as daemon:
        await daemon.wait_for("graph_started", 60)
        v1 = (await serving(state))["pipelines"]["turbines"]["slot"]
        os.kill(daemon.proc.pid, signal.SIGSTOP)  # alive, but not looking
        try:
            done = await cli("model", "install", str(bundle), "--trust", str(keys),
                             "--wait", "1.5", "-c", str(config))
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        assert done.returncode == 0, done.stderr
        v2 = ModelStore.for_model(state, "windturbine").current()
        assert (f"no running daemon confirmed windturbine slot {v2.name} within 1.5 s "
                f"(pid {daemon.proc.pid} serves turbines: slot {v1})") in done.stderr
        swapped = await daemon.wait_for("model_swapped", 60)  # it catches up
        assert swapped["slot"] == v2.name
        assert daemon.stop() == 0
