"""Where ``edged run``, ``edged check-config`` and ``edged model`` find the device config
when they are given none: ``-c FILE``, else ``$EDGED_CONFIG``, else
``/etc/edged/edged.yaml``; and that the shipped config and unit agree on the state
directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edged.config.locate import DEFAULT_CONFIG
from tests.support import LoggedProcess, unit_directive
from tests.support.model_cli import EX_CONFIG, edged_cli, store_config

ROOT = Path(__file__).resolve().parents[2]
no_default_config = pytest.mark.skipif(
    DEFAULT_CONFIG.exists(), reason=f"{DEFAULT_CONFIG} exists on this machine")


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "device.yaml"
    path.write_text(store_config(tmp_path / "state"))
    return path


def test_check_config_without_a_file_checks_edged_config(config):
    done = edged_cli("check-config", env={"EDGED_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{config}: OK"), done.stdout


def test_a_file_named_on_the_command_line_wins_over_edged_config(config, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {}\n")
    done = edged_cli("check-config", str(config), env={"EDGED_CONFIG": str(bad)})
    assert done.returncode == 0, done.stderr
    done = edged_cli("check-config", env={"EDGED_CONFIG": str(bad)})
    assert done.returncode == EX_CONFIG and str(bad) in done.stderr


@no_default_config
def test_no_config_anywhere_names_the_path_tried_and_the_ways_out():
    for args, how in ((["check-config"], "edged check-config FILE"),
                      (["run"], "-c FILE"),
                      (["model", "list"], "-c FILE or --state-dir DIR")):
        done = edged_cli(*args)
        assert done.returncode == EX_CONFIG, (args, done.stderr)
        assert (f"No config file at {DEFAULT_CONFIG} (the default): name one with {how}, "
                "or set EDGED_CONFIG=FILE") in done.stderr, (args, done.stderr)


def test_a_missing_edged_config_is_named_as_such(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    done = edged_cli("run", env={"EDGED_CONFIG": str(missing)})
    assert done.returncode == EX_CONFIG
    assert f"No config file at {missing} (from $EDGED_CONFIG)" in done.stderr
    assert "nothing was started" in done.stderr


async def test_run_without_c_runs_edged_config(config):
    with LoggedProcess(["edged", "--log-format", "json", "run"],
                       env={"EDGED_CONFIG": str(config)}) as daemon:
        started = await daemon.wait_for("graph_started", 60)
        assert started["pipelines"] == ["turbines"]
        assert daemon.stop() == 0


def test_help_states_the_lookup_order():
    for args in (["run", "--help"], ["check-config", "--help"], ["model", "list", "--help"]):
        done = edged_cli(*args)
        text = " ".join(done.stdout.split())
        assert "$EDGED_CONFIG if set, else /etc/edged/edged.yaml" in text, (args, text)


def test_the_shipped_config_keeps_state_where_the_unit_gives_it():
    shipped = yaml.safe_load((ROOT / "configs" / "edged.yaml").read_text())
    unit = ROOT / "systemd" / "edged.service"
    assert shipped["state_dir"] == "/var/lib/" + unit_directive(unit, "StateDirectory")
