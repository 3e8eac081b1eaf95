"""``sudo edged model install`` leaves a store the service's user can still change: what
root creates under a state directory owned by another user is given to that user, before
it is renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from edged.model.store import ModelStore
from tests.support.model_cli import BUILTIN, edged_cli, signed_bundle

NOBODY = 65534  # the service's user, as far as these tests go

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, setuid)")


@pytest.fixture
def service_state():
    """A state directory owned by NOBODY, in a directory NOBODY can reach (pytest's
    tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="edged-owner-"))
    top.chmod(0o755)
    state = top / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    yield state
    shutil.rmtree(top)


def owners(root: Path) -> dict[str, tuple[int, int]]:
    """(uid, gid) of ``root`` and everything under it, by relative path."""
    found = {".": (root.stat().st_uid, root.stat().st_gid)}
    for path in root.rglob("*"):
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_uid, info.st_gid)
    return found


def rollback_as_service(state_dir: Path) -> str:
    """Roll the store back in a child process running as the service's user (forked:
    this venv's interpreter lives under /root, out of that user's reach): "ok", or the
    error it met."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            ModelStore.for_model(state_dir, "windturbine").rollback()
            outcome = "ok"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = f"{type(exc).__name__}: {exc}"
        os.write(write, outcome.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


def test_installs_as_root_leave_the_store_to_its_owner(tmp_path, service_state):
    keys = tmp_path / "keys"
    for version in (2, 3):
        done = edged_cli("model", "install", str(signed_bundle(tmp_path, version, keys,
                                                                 name=f"v{version}")),
                         "--trust", str(keys), "--state-dir", str(service_state))
        assert done.returncode == 0, done.stderr
    found = owners(service_state / "models")
    assert {"windturbine/state.json", "windturbine/.lock"} <= set(found)
    assert len([p for p in found if p.endswith("model.onnx")]) == 2
    wrong = {path: owner for path, owner in found.items() if owner != (NOBODY, NOBODY)}
    assert wrong == {}
    assert not [p for p in found if ".incoming" in p or ".tmp" in p]

    # The service's user can change what root installed.
    assert rollback_as_service(service_state) == "ok"
    assert ModelStore.for_model(service_state, "windturbine").current().version == 2


def signed_model(directory: Path, version: int) -> Path:
    model = directory / f"model-v{version}"
    shutil.copytree(BUILTIN, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["version"] = version
    (model / "manifest.json").write_text(json.dumps(manifest))
    return model


def test_without_the_owner_the_service_could_not_change_the_store(service_state):
    """The control: a store that root filled as root (owner=None, what edged did before)
    is out of the service's reach, so the test above can tell the difference."""
    store = ModelStore(service_state / "models" / "windturbine", owner=None)
    store.seed(BUILTIN)
    store.activate(store.install(signed_model(service_state.parent, 2)))
    assert owners(service_state / "models")["windturbine/state.json"] == (0, 0)
    assert rollback_as_service(service_state).startswith("PermissionError")


def test_a_state_dir_of_roots_own_is_left_alone(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    ModelStore.for_model(state, "windturbine").seed(BUILTIN)
    assert set(owners(state / "models").values()) == {(0, 0)}
