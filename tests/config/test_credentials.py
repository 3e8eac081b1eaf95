"""``${NAME}`` secrets from systemd credentials: ``$CREDENTIALS_DIRECTORY/NAME`` first,
then the environment; a credential that cannot be used is a located config error naming
the file, never its value."""

from __future__ import annotations

import pytest

from edged.base.secrets import MAX_SECRET_BYTES
from edged.config import parse_config
from edged.plugin.manager import make_plugin_manager
from tests.support.model_cli import EX_CONFIG, edged_cli

CONFIG = """\
sources:
  farm: {type: simulator}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {type: windturbine}
    inference: {type: onnx}
actuators:
  pager:
    type: webhook
    inputs: [turbines]
    url: https://ops.example/alarms
    token: ${EDGED_TEST_PAGER_TOKEN}
    headers: {X-Api-Key: "${EDGED_TEST_PAGER_KEY}"}
"""


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    """An empty $CREDENTIALS_DIRECTORY, as systemd makes one for LoadCredential=."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    for name in ("EDGED_TEST_PAGER_TOKEN", "EDGED_TEST_PAGER_KEY"):
        monkeypatch.delenv(name, raising=False)
    return directory


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager()[1]


def pager(registry):
    return parse_config(CONFIG, "edged.yaml", registry).actuators["pager"]


def test_a_credential_file_gives_the_secret(credentials, registry):
    (credentials / "EDGED_TEST_PAGER_TOKEN").write_text("t0ken\n")  # as `echo` writes it
    (credentials / "EDGED_TEST_PAGER_KEY").write_bytes(b"k3y")
    config = pager(registry)
    assert config.token.get_secret_value() == "t0ken"
    assert config.headers["X-Api-Key"].get_secret_value() == "k3y"


def test_the_credential_wins_over_the_environment(credentials, registry, monkeypatch):
    monkeypatch.setenv("EDGED_TEST_PAGER_TOKEN", "from-env")
    monkeypatch.setenv("EDGED_TEST_PAGER_KEY", "key-from-env")
    (credentials / "EDGED_TEST_PAGER_TOKEN").write_text("from-credential")
    config = pager(registry)
    assert config.token.get_secret_value() == "from-credential"
    # No credential of that name: the environment's.
    assert config.headers["X-Api-Key"].get_secret_value() == "key-from-env"


def test_neither_is_named_with_where_it_looked(credentials, registry):
    (credentials / "EDGED_TEST_PAGER_KEY").write_text("k")
    with pytest.raises(Exception) as caught:
        pager(registry)
    problems = caught.value.problems
    assert problems == [
        "Invalid config for 'actuators.pager.token' at edged.yaml, line 13: "
        f"EDGED_TEST_PAGER_TOKEN is neither a credential in $CREDENTIALS_DIRECTORY "
        f"({credentials}) nor an environment variable"]


@pytest.mark.parametrize("content, expected", [
    (b"x" * (MAX_SECRET_BYTES + 1), "is over the limit of 65,536 bytes"),
    (b"caf\xe9", "is not UTF-8 (byte 3)"),
])
def test_a_credential_that_cannot_be_used_is_an_error_naming_the_file(
        credentials, registry, content, expected):
    path = credentials / "EDGED_TEST_PAGER_TOKEN"
    path.write_bytes(content)
    (credentials / "EDGED_TEST_PAGER_KEY").write_text("k")
    with pytest.raises(Exception) as caught:
        pager(registry)
    [problem] = caught.value.problems
    assert problem.startswith("Invalid config for 'actuators.pager.token' at edged.yaml, "
                              f"line 13: credential {path} {expected}"), problem
    assert "xxxx" not in problem


def test_check_config_reads_credentials_as_the_unit_passes_them(tmp_path, credentials):
    config = tmp_path / "edged.yaml"
    config.write_text(CONFIG)
    done = edged_cli("check-config", str(config),
                     env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert done.returncode == EX_CONFIG and "EDGED_TEST_PAGER_TOKEN" in done.stderr
    (credentials / "EDGED_TEST_PAGER_TOKEN").write_text("t")
    (credentials / "EDGED_TEST_PAGER_KEY").write_text("k")
    done = edged_cli("check-config", str(config),
                     env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert done.returncode == 0, done.stderr
