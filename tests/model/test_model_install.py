"""``edged model install``: a signed bundle into the store, as an operator runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edged.model.bundle import build_bundle, generate_keypair, load_private_key
from edged.model.package import resolve_model_path
from edged.model.store import ModelStore

BUILTIN = resolve_model_path("builtin:windturbine-v1")


def edged(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def bundle_of(tmp_path: Path, version: int, keys: Path, name: str = "bundle") -> Path:
    """A bundle of windturbine-v1 relabelled ``version``, signed by the key in ``keys``
    (made there on first use)."""
    if not (keys / "signing.key.pem").exists():
        generate_keypair(keys)
    model_dir = tmp_path / f"{name}-model"
    shutil.copytree(BUILTIN, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["version"] = version
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return build_bundle(model_dir, tmp_path / f"{name}.tar.gz",
                        load_private_key(keys / "signing.key.pem"))


def slot_names(state: Path) -> list[str]:
    return sorted(s.name for s in ModelStore.for_model(state, "windturbine").slots())


@pytest.fixture
def seeded(tmp_path):
    state = tmp_path / "state"
    v1 = ModelStore.for_model(state, "windturbine").seed(BUILTIN)
    return state, v1


def test_install_activates_and_rollback_undoes_it(tmp_path, seeded):
    state, v1 = seeded
    keys = tmp_path / "keys"  # keygen's folder, private key included, trusted as is
    bundle = bundle_of(tmp_path, 2, keys)

    done = edged("model", "install", str(bundle), "--state-dir", str(state),
                 "--trust", str(keys))
    assert done.returncode == 0, done.stderr
    store = ModelStore.for_model(state, "windturbine")
    v2 = store.current()
    assert v2 is not None and v2.version == 2 and store.previous() == v1
    assert f"installed windturbine version 2 (slot {v2.name})" in done.stdout
    assert f"no running daemon serves {state}: edged serves windturbine slot {v2.name} " \
        "from its next start" in done.stdout
    assert (v2.path / "manifest.sig").is_file()
    assert [p.name for p in (state / "models").iterdir()] == ["windturbine"]  # no leftovers

    done = edged("model", "list", "--json", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["slots"]
    assert [(r["version"], r["state"]) for r in rows] == [(2, "current"), (1, "previous")]

    done = edged("model", "rollback", "windturbine", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert ModelStore.for_model(state, "windturbine").current() == v1


def test_untrusted_key_is_rejected_and_the_store_untouched(tmp_path, seeded):
    state, v1 = seeded
    bundle = bundle_of(tmp_path, 2, tmp_path / "rogue")
    trusted = tmp_path / "trusted"
    generate_keypair(trusted)
    before = slot_names(state)

    done = edged("model", "install", str(bundle), "--state-dir", str(state),
                 "--trust", str(trusted))
    assert done.returncode == 1
    assert done.stderr.startswith("REJECTED unknown_key: "), done.stderr
    store = ModelStore.for_model(state, "windturbine")
    assert store.current() == v1 and store.previous() is None
    assert slot_names(state) == before
    assert [p.name for p in (state / "models").iterdir()] == ["windturbine"]


def test_a_revoked_key_is_rejected(tmp_path, seeded):
    state, v1 = seeded
    keys = tmp_path / "keys"
    bundle = bundle_of(tmp_path, 2, keys)
    sig = json.loads(subprocess.run(["tar", "-xzOf", str(bundle), "manifest.sig"],
                                    capture_output=True, check=True).stdout)

    done = edged("model", "install", str(bundle), "--state-dir", str(state),
                 "--trust", str(keys), "--revoked", sig["key_id"])
    assert done.returncode == 1
    assert done.stderr.startswith("REJECTED revoked_key: "), done.stderr
    assert ModelStore.for_model(state, "windturbine").current() == v1


def test_the_same_version_again_is_not_newer(tmp_path, seeded):
    state, _ = seeded
    keys = tmp_path / "keys"
    bundle = bundle_of(tmp_path, 2, keys)
    args = ("model", "install", str(bundle), "--state-dir", str(state), "--trust", str(keys))
    assert edged(*args).returncode == 0
    store = ModelStore.for_model(state, "windturbine")
    v2, before = store.current(), slot_names(state)

    done = edged(*args)
    assert done.returncode == 1
    assert done.stderr.startswith("REJECTED not_newer: "), done.stderr
    store = ModelStore.for_model(state, "windturbine")
    assert store.current() == v2 and slot_names(state) == before


def test_no_activate_stages_the_slot(tmp_path, seeded):
    state, v1 = seeded
    keys = tmp_path / "keys"
    bundle = bundle_of(tmp_path, 2, keys)

    done = edged("model", "install", str(bundle), "--state-dir", str(state),
                 "--trust", str(keys), "--no-activate")
    assert done.returncode == 0, done.stderr
    store = ModelStore.for_model(state, "windturbine")
    assert store.current() == v1
    assert [s.version for s in store.slots()] == [1, 2]


def test_install_into_an_empty_store(tmp_path):
    state = tmp_path / "state"
    keys = tmp_path / "keys"
    bundle = bundle_of(tmp_path, 2, keys)

    done = edged("model", "install", str(bundle), "--state-dir", str(state),
                 "--trust", str(keys))
    assert done.returncode == 0, done.stderr
    store = ModelStore.for_model(state, "windturbine")
    assert store.current().version == 2 and store.previous() is None


def test_a_missing_trust_dir_is_a_config_error(tmp_path, seeded):
    state, v1 = seeded
    bundle = bundle_of(tmp_path, 2, tmp_path / "keys")
    done = edged("model", "install", str(bundle), "--state-dir", str(state),
                 "--trust", str(tmp_path / "nowhere"))
    assert done.returncode == 78
    assert ModelStore.for_model(state, "windturbine").current() == v1
