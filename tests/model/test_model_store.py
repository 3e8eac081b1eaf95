"""The model store: install, activate, roll back, list, clean up, seed."""

from __future__ import annotations

import json

import pytest

from edged.model.errors import StoreError
from edged.model.package import resolve_model_path
from edged.model.store import SLOT_META, ModelStore, builtin_model, stores

BUILTIN = resolve_model_path("builtin:windturbine-v1")


@pytest.fixture
def store(tmp_path):
    return ModelStore.for_model(tmp_path / "state", "windturbine")


def test_an_empty_store_has_no_current_and_cannot_roll_back(store):
    assert store.current() is None and store.previous() is None
    assert store.slots() == []
    with pytest.raises(StoreError, match="no previous slot"):
        store.rollback()


def test_install_makes_a_complete_slot_but_does_not_activate(store, make_model):
    slot = store.install(make_model(2))
    assert slot.version == 2 and slot.model == "windturbine"
    assert slot.name == f"2-{slot.id}" and len(slot.id) == 8
    assert slot.path == store.root / "slots" / slot.name
    assert (slot.path / "manifest.json").is_file() and (slot.path / "model.onnx").is_file()
    assert (slot.path / SLOT_META).is_file()
    assert slot.manifest().version == 2
    assert store.current() is None
    assert store.slots() == [slot]
    # The same manifest again is the same slot, not a second copy.
    assert store.install(make_model(2)) == slot
    assert len(store.slots()) == 1


def test_install_refuses_another_models_directory(tmp_path, make_model):
    other = ModelStore.for_model(tmp_path / "state", "pumps")
    with pytest.raises(StoreError, match="does not belong"):
        other.install(make_model(2))


def test_activate_then_rollback_then_rollback_again(store, make_model):
    v1 = store.install(make_model(1))
    v2 = store.install(make_model(2))
    v3 = store.install(make_model(3))
    store.activate(v1)
    assert (store.current(), store.previous()) == (v1, None)
    store.activate(v2)
    assert (store.current(), store.previous()) == (v2, v1)
    store.activate(v3)
    assert (store.current(), store.previous()) == (v3, v2)
    store.activate(v3)  # already current: nothing changes
    assert (store.current(), store.previous()) == (v3, v2)

    assert store.rollback() == v2
    # The new previous is what was current before v2, never v3 (rolled away from).
    assert (store.current(), store.previous()) == (v2, v1)
    assert store.rollback() == v1
    assert (store.current(), store.previous()) == (v1, None)
    with pytest.raises(StoreError):
        store.rollback()

    state = json.loads((store.root / "state.json").read_text())
    assert state["current"] == v1.name and state["previous"] is None
    assert [h["action"] for h in state["history"]] == [
        "activate", "activate", "activate", "rollback", "rollback"]


def test_remove_unused_keeps_current_and_previous(store, make_model):
    slots = [store.install(make_model(v)) for v in (1, 2, 3, 4)]
    store.activate(slots[1])
    store.activate(slots[2])
    assert store.remove_unused(keep=3) == [slots[0].name]  # the newest other is kept
    assert store.remove_unused() == [slots[3].name]
    assert [s.name for s in store.slots()] == [slots[1].name, slots[2].name]
    assert store.remove_unused(keep=0) == []  # never current or previous
    assert sorted(p.name for p in (store.root / "slots").iterdir()) == [
        slots[1].name, slots[2].name]


def test_seed_installs_the_builtin_model_once(store, make_model):
    assert builtin_model("windturbine") == BUILTIN
    assert builtin_model("pumps") is None
    seeded = store.seed(BUILTIN)
    assert store.current() == seeded and seeded.version == 1
    store.activate(store.install(make_model(2)))
    assert store.seed(BUILTIN).version == 2  # a store with a current slot is left alone
    assert store.state()["history"][0]["action"] == "seed"


def test_stores_lists_every_model(tmp_path, store, make_model):
    assert stores(tmp_path / "state") == []
    store.seed(BUILTIN)
    assert [s.name for s in stores(tmp_path / "state")] == ["windturbine"]


def test_a_missing_current_slot_falls_back_to_previous(store, make_model):
    v1, v2 = store.install(make_model(1)), store.install(make_model(2))
    store.activate(v1)
    store.activate(v2)
    (v2.path / SLOT_META).unlink()  # damaged outside the store's control
    assert store.current() == v1


def test_model_names_must_be_plain(tmp_path):
    for bad in ("", "..", "a/b", ".hidden"):
        with pytest.raises(StoreError):
            ModelStore.for_model(tmp_path, bad)
