"""The secret resolver (edged.base.secrets) on its own: what any credential file gives."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.secrets import MAX_SECRET_BYTES, SecretError, resolve_secret


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_an_unreadable_credential_is_not_replaced_by_the_environment(credentials, monkeypatch):
    (credentials / "EDGED_TEST_PAGER_TOKEN").mkdir()  # not a file
    monkeypatch.setenv("EDGED_TEST_PAGER_TOKEN", "from-env")
    with pytest.raises(SecretError, match=f"cannot read credential {credentials}"):
        resolve_secret("EDGED_TEST_PAGER_TOKEN")


def test_a_name_that_is_not_a_reference_is_refused(credentials):
    with pytest.raises(SecretError, match="not a secret name"):
        resolve_secret("../etc/shadow")


def test_without_a_credentials_directory_the_environment_is_read(monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("EDGED_TEST_SECRET", "v")
    assert resolve_secret("EDGED_TEST_SECRET") == "v"
    monkeypatch.delenv("EDGED_TEST_SECRET")
    with pytest.raises(SecretError, match="environment variable EDGED_TEST_SECRET is not "
                       "set"):
        resolve_secret("EDGED_TEST_SECRET")


@pytest.mark.fuzz
@given(content=st.binary(max_size=MAX_SECRET_BYTES + 2))
def test_any_credential_file_gives_a_string_or_a_named_error(tmp_path_factory, content):
    directory = tmp_path_factory.mktemp("credentials")
    (directory / "EDGED_FUZZ").write_bytes(content)
    saved = os.environ.get("CREDENTIALS_DIRECTORY")
    os.environ["CREDENTIALS_DIRECTORY"] = str(directory)
    try:
        value = resolve_secret("EDGED_FUZZ")
    except SecretError as exc:
        assert str(directory / "EDGED_FUZZ") in str(exc)
    else:
        assert value.encode() in (content, content[:-1], content[:-2])
    finally:
        if saved is None:
            del os.environ["CREDENTIALS_DIRECTORY"]
        else:
            os.environ["CREDENTIALS_DIRECTORY"] = saved
