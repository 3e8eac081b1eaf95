"""``edged model`` acts on the store of the device's config: the one named with ``-c``,
else ``$EDGED_CONFIG``, else ``/etc/edged/edged.yaml``; ``--state-dir`` names the
directory itself. Only ``state_dir`` is read, so it works in a shell that lacks the
service's secrets."""

from __future__ import annotations

import json

from edged.model.store import ModelStore
from tests.support.model_cli import BUILTIN, EX_CONFIG, edged_cli, store_config


def slots_listed(done) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [row["slot"] for row in json.loads(done.stdout)["slots"]]


def test_list_finds_the_store_of_edged_config(tmp_path):
    state = tmp_path / "var-lib-edged"
    seeded = ModelStore.for_model(state, "windturbine").seed(BUILTIN)
    config = tmp_path / "edged.yaml"
    config.write_text(store_config(state))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # Run from another directory: ./state there is not what the config names.
    done = edged_cli("model", "list", "--json", env={"EDGED_CONFIG": str(config)},
                     cwd=elsewhere)
    assert slots_listed(done) == [seeded.name]
    assert json.loads(done.stdout)["state_dir"] == str(state)
    assert not (elsewhere / "state").exists()


def test_c_and_state_dir_override_edged_config(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    slot = ModelStore.for_model(ours, "windturbine").seed(BUILTIN)
    (tmp_path / "ours.yaml").write_text(store_config(ours))
    (tmp_path / "theirs.yaml").write_text(store_config(theirs))
    env = {"EDGED_CONFIG": str(tmp_path / "theirs.yaml")}
    assert slots_listed(edged_cli("model", "list", "--json", env=env)) == []
    assert slots_listed(edged_cli("model", "list", "--json", "-c",
                                  str(tmp_path / "ours.yaml"), env=env)) == [slot.name]
    assert slots_listed(edged_cli("model", "list", "--json", "--state-dir", str(ours),
                                  env=env)) == [slot.name]


def test_the_services_secrets_are_not_needed(tmp_path):
    """The password is set in edged.env or a systemd credential for the service, not in
    the operator's shell: the model command still finds the store."""
    state = tmp_path / "state"
    slot = ModelStore.for_model(state, "windturbine").seed(BUILTIN)
    config = tmp_path / "edged.yaml"
    config.write_text(store_config(state, extra="""\
actuators:
  bus:
    type: mqtt
    inputs: [turbines]
    broker: {host: localhost, username: edged, password: "${EDGED_TEST_UNSET_PASSWORD}"}
"""))
    check = edged_cli("check-config", str(config))  # the daemon needs it
    assert check.returncode == EX_CONFIG and "EDGED_TEST_UNSET_PASSWORD" in check.stderr
    done = edged_cli("model", "list", "--json", "-c", str(config))
    assert slots_listed(done) == [slot.name]


def test_a_config_without_state_dir_is_warned_about(tmp_path):
    config = tmp_path / "edged.yaml"
    config.write_text(store_config(tmp_path / "x").replace(f"state_dir: {tmp_path / 'x'}\n",
                                                           ""))
    done = edged_cli("model", "list", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{config} sets no state_dir, so this command uses state" in done.stderr
    assert "set state_dir in the config" in done.stderr
    # Under systemd's environment it is the service's own directory: no warning.
    done = edged_cli("model", "list", "--json", "-c", str(config),
                     env={"STATE_DIRECTORY": str(tmp_path / "svc")})
    assert json.loads(done.stdout)["state_dir"] == str(tmp_path / "svc")
    assert "warning" not in done.stderr


def test_a_state_dir_that_is_not_a_path_is_a_config_error(tmp_path):
    config = tmp_path / "edged.yaml"
    config.write_text("sources: {}\nstate_dir: [1, 2]\n")
    done = edged_cli("model", "list", "-c", str(config))
    assert done.returncode == EX_CONFIG
    assert f"Invalid config for 'state_dir' at {config}, line 2: must be a directory path" \
        in done.stderr
    config.write_text("state_dir: [unclosed\n")
    done = edged_cli("model", "list", "-c", str(config))
    assert done.returncode == EX_CONFIG and f"Invalid YAML at {config}" in done.stderr
