"""kill -9 at every step of install, activate and remove: on reopening, the store's
current slot is the old or the new one, never none, and what the crash left is gone."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from edged.model.package import resolve_model_path
from edged.model.store import SLOT_META, ModelStore

BUILTIN = resolve_model_path("builtin:windturbine-v1")

# Seeds v1, then (with a hook that SIGKILLs itself at POINT) installs and activates v2,
# installs v3 and removes it as unused.
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from edged.model.store import ModelStore

    root, point, builtin, v2, v3 = sys.argv[1:]

    def fault(name):
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    ModelStore(Path(root)).seed(Path(builtin))
    store = ModelStore(Path(root), fault=fault)
    store.activate(store.install(Path(v2)))
    store.install(Path(v3))
    store.remove_unused(keep=0)
    print("finished without reaching", point)
""")

#: crash point -> the version current after the crash
POINTS = {"copied": 1, "marked": 1, "renamed": 1, "state_written": 1, "state_renamed": 2,
          "trashed": 2}


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_every_step(tmp_path, make_model, point):
    root = tmp_path / "state" / "models" / "windturbine"
    v2, v3 = make_model(2), make_model(3)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root), point, str(BUILTIN),
                           str(v2), str(v3)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == -9, done.stdout + done.stderr

    store = ModelStore(root)  # opening cleans up
    current = store.current()
    assert current is not None and current.version == POINTS[point]
    if current.version == 2:
        assert store.previous().version == 1
    leftovers = [p.name for p in (root / "slots").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not (root / "state.json.tmp").exists()
    for path in (root / "slots").iterdir():  # everything left is a complete slot
        assert (path / SLOT_META).is_file(), path
    state = json.loads((root / "state.json").read_text())
    assert store.slot(state["current"]) == current


def test_an_exception_between_the_steps_leaves_the_old_current(tmp_path, make_model):
    class Crash(Exception):
        pass

    root = tmp_path / "windturbine"
    ModelStore(root).seed(BUILTIN)
    for point in ("copied", "marked", "state_written"):
        def fault(name, point=point):
            if name == point:
                raise Crash(name)

        store = ModelStore(root, fault=fault)
        with pytest.raises(Crash):
            store.activate(store.install(make_model(2)))
        assert ModelStore(root).current().version == 1, point


def test_opening_removes_half_written_slots_but_not_complete_ones(tmp_path, make_model):
    root = tmp_path / "windturbine"
    store = ModelStore(root)
    store.seed(BUILTIN)
    shutil.copytree(BUILTIN, root / "slots" / ".tmp-0123")
    shutil.copytree(BUILTIN, root / "slots" / "9-deadbeef")  # no completion marker
    (root / "slots" / ".trash-1-abc").mkdir()
    assert sorted(ModelStore(root).recover()) == []  # already cleaned by opening
    assert sorted(p.name for p in (root / "slots").iterdir()) == [store.current().name]


def test_cleaning_waits_for_another_writer(tmp_path):
    root = tmp_path / "windturbine"
    (root / "slots" / ".tmp-busy").mkdir(parents=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an install in progress elsewhere
        ModelStore(root)
        assert (root / "slots" / ".tmp-busy").is_dir()
    finally:
        os.close(fd)
    ModelStore(root)
    assert not (root / "slots" / ".tmp-busy").exists()
