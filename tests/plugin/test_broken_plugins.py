"""A broken third-party plugin, installed for real: an ``edged.plugins`` entry point in a
distribution's ``*.dist-info`` on ``PYTHONPATH``, found by importlib.metadata in a child
``edged``. It is left out with a message that names it, its distribution, what went
wrong and how to block it; the commands that do not need it still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.testing import farm_config
from tests.support.processes import EdgedProcess

ROOT = Path(__file__).resolve().parents[2]
DEMO = (ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8")
EX_CONFIG = 78

# Fails on import, as a plugin whose library is missing does.
IMPORT_FAILS = 'raise RuntimeError("the GPIO library is missing")\n'
# Imports, but its registration hook raises; it would also register a command.
HOOK_RAISES = """\
from edged.plugin import CliCommand, hookimpl

@hookimpl
def edged_component_types():
    raise ValueError("bad pin table")

@hookimpl
def edged_cli_commands():
    return [CliCommand("pins", "print the pin table", lambda parser: None, lambda args: 0)]
"""
FIX = "block it with `edged -p no:{0} ...`, EDGED_BLOCK_PLUGINS={0} or " \
      "`plugins: {{block: [{0}]}}` in the config"


def install(site: Path, plugin: str, distribution: str, version: str, code: str) -> None:
    """Installs distribution ``distribution`` into ``site`` as pip would lay it out: a
    module ``edged_<plugin>`` and a dist-info whose entry point ``plugin`` names it."""
    module = f"edged_{plugin}"
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(code)
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[edged.plugins]\n{plugin} = {module}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    install(site, "gpio", "edged-gpio", "1.2", IMPORT_FAILS)
    install(site, "pins", "edged-pins", "0.3", HOOK_RAISES)
    return site


def env_with(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGED_BLOCK_PLUGINS", "EDGED_TRACE_HOOKS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **extra}


def edged(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], cwd=ROOT,
                          env=env_with(site, **env), capture_output=True, text=True,
                          timeout=120, check=False)


def broken_logged(stderr: str) -> dict[str, dict]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return {line["plugin"]: line for line in lines if line["event"] == "plugin_broken"}


def test_plugins_lists_both_as_broken_and_the_rest_as_usual(site):
    done = edged(site, "plugins")
    assert done.returncode == 1, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]
            if line and not line[0].isspace() and ":" not in line.split()[0]}
    assert rows["gpio"] == ["1.2", "edged-gpio", "BROKEN"]
    assert rows["pins"] == ["0.3", "edged-pins", "BROKEN"]
    assert rows["simulator"][1:] == ["edged", "source:simulator"]
    assert ("broken: 'gpio' from edged-gpio 1.2, left out: failed to import edged_gpio: "
            "RuntimeError: the GPIO library is missing (") in done.stdout
    assert f"  {FIX.format('gpio')}" in done.stdout.splitlines()
    assert f"  {FIX.format('pins')}" in done.stdout.splitlines()
    assert "Traceback" not in done.stderr


def test_plugins_json_says_what_went_wrong_and_where(site):
    done = edged(site, "plugins", "--json")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    broken = {entry["name"]: entry for entry in data["broken"]}
    assert set(broken) == {"gpio", "pins"}
    gpio, pins = broken["gpio"], broken["pins"]
    assert (gpio["distribution"], gpio["version"], gpio["module"]) == (
        "edged-gpio", "1.2", "edged_gpio")
    assert gpio["error"] == ("failed to import edged_gpio: RuntimeError: the GPIO library is "
                             f"missing ({site / 'edged_gpio' / '__init__.py'}, line 1)")
    assert pins["error"] == ("edged_component_types() raised ValueError: bad pin table "
                             f"({site / 'edged_pins' / '__init__.py'}, line 5)")
    names = {row["name"] for row in data["plugins"]}
    assert "simulator" in names and not names & {"gpio", "pins"}


def test_check_config_runs_and_warns_with_how_to_block(site):
    done = edged(site, "check-config", "configs/demo.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("configs/demo.yaml: OK")
    logged = broken_logged(done.stderr)
    assert set(logged) == {"gpio", "pins"}
    assert logged["gpio"]["level"] == "warning"
    assert logged["gpio"]["distribution"] == "edged-gpio"
    assert logged["gpio"]["error"].startswith("failed to import edged_gpio: RuntimeError")
    assert logged["gpio"]["fix"] == FIX.format("gpio")
    assert logged["pins"]["error"].startswith("edged_component_types() raised ValueError")


@pytest.mark.parametrize("how", ["-p", "env", "config"])
def test_a_blocked_broken_plugin_is_not_even_imported(site, tmp_path, how):
    config = tmp_path / "demo.yaml"
    config.write_text(("plugins: {block: [gpio, pins]}\n" if how == "config" else "") + DEMO)
    args = ["-p", "no:gpio", "-p", "no:pins"] if how == "-p" else []
    env = {"EDGED_BLOCK_PLUGINS": "gpio,pins"} if how == "env" else {}
    done = edged(site, *args, "check-config", str(config), **env)
    assert done.returncode == 0, done.stderr
    assert broken_logged(done.stderr) == {}


def test_a_config_that_uses_a_broken_plugins_type_fails_naming_it(site, tmp_path):
    config = tmp_path / "uses.yaml"
    config.write_text(DEMO.replace("type: log", "type: gpio"))
    for command in (["check-config", str(config)], ["run", "-c", str(config)]):
        done = edged(site, *command, STATE_DIRECTORY=str(tmp_path / "state"))
        assert done.returncode == EX_CONFIG, done.stderr
        assert ("unknown actuator type 'gpio' (plugin 'gpio' from edged-gpio 1.2, which may "
                "provide it, is broken: failed to import edged_gpio: RuntimeError: the GPIO "
                "library is missing (") in done.stderr, done.stderr
        assert done.stderr.rstrip().endswith("nothing was started.")
    assert not (tmp_path / "state").exists()


def test_the_command_of_a_broken_plugin_is_explained(site):
    done = edged(site, "pins")
    assert done.returncode == 2
    before, after = done.stderr.split("usage:", 1)
    assert ("edged: plugin 'pins' from edged-pins 0.3 is broken and was left out, with any "
            "command it registers: edged_component_types() raised ValueError") in before
    assert FIX.format("pins") in before
    assert "invalid choice: 'pins'" in after


def test_a_known_command_says_nothing_of_them_before_parsing(site):
    done = edged(site, "--version")
    assert done.returncode == 0
    assert done.stderr == ""


async def test_run_of_a_config_that_does_not_use_them_runs(site, tmp_path):
    config = tmp_path / "farm.yaml"
    config.write_text(farm_config("gw", tmp_path / "state", turbines=2))  # logs at info
    with EdgedProcess(config, env=env_with(site), cwd=ROOT) as daemon:
        await daemon.wait_for("graph_started", 60)
        assert {line["plugin"] for line in daemon.events("plugin_broken")} == {"gpio", "pins"}
        assert daemon.stop() == 0
