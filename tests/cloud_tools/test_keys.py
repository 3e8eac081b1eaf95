"""``edged-cloud keys``: a key directory with one current key, rotation that keeps the old key
trusted, revocation that prints what devices need, and no key ever overwritten."""

from __future__ import annotations

import json
import stat

import pytest

from edged.model.bundle import BundleError, TrustConfig, TrustStore
from edged_cloud import cli


def keys(capsys, *argv):
    code = cli.main(["keys", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys, directory):
    code, out, _ = keys(capsys, "list", "--dir", str(directory), "--json")
    assert code == 0
    return {k["id"]: k["status"] for k in json.loads(out)["keys"]}


def test_create_makes_one_current_key_private_to_its_owner(tmp_path, capsys):
    directory = tmp_path / "keys"
    code, out, _ = keys(capsys, "create", "--dir", str(directory), "--json")
    assert code == 0
    kid = json.loads(out)["created"]
    assert listed(capsys, directory) == {kid: "current"}
    assert stat.S_IMODE((directory / f"{kid}.key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    trust = TrustStore.from_config(TrustConfig(keys_dir=directory))
    assert list(trust.keys) == [kid]  # the private key beside it is no trust anchor
    code, out, _ = keys(capsys, "list", "--dir", str(directory))
    assert kid in out and "current" in out and "CREATED" in out


def test_create_never_overwrites(tmp_path, capsys):
    directory = tmp_path / "keys"
    assert keys(capsys, "create", "--dir", str(directory))[0] == 0
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    code, _, err = keys(capsys, "create", "--dir", str(directory))
    assert code == 1 and "not overwriting" in err
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "release.key.pem").write_text("a key made elsewhere")
    code, _, err = keys(capsys, "create", "--dir", str(other))
    assert code == 1 and "holds key files already" in err


def test_rotate_keeps_the_old_key_trusted_and_revoke_prints_the_device_config(tmp_path,
                                                                              capsys):
    directory = tmp_path / "keys"
    keys(capsys, "create", "--dir", str(directory))
    (first,) = listed(capsys, directory)
    code, out, _ = keys(capsys, "rotate", "--dir", str(directory), "--json")
    assert code == 0
    second = json.loads(out)["created"]
    assert json.loads(out)["retired"] == first
    assert listed(capsys, directory) == {first: "retired", second: "current"}
    # Devices with the directory's public keys trust both until the old one is revoked.
    assert set(TrustStore.from_config(TrustConfig(keys_dir=directory)).keys) == {first, second}

    code, out, err = keys(capsys, "revoke", "--dir", str(directory), second)
    assert code == 1 and "current signing key" in err and "rotate first" in err
    code, out, _ = keys(capsys, "revoke", "--dir", str(directory), first[:6])
    assert code == 0
    assert f'revoked: ["{first}"]' in out
    assert listed(capsys, directory) == {first: "revoked", second: "current"}
    # What it printed is what a device's TrustConfig takes: the key is then refused.
    config = TrustConfig(keys_dir=directory, revoked=[first])
    store = TrustStore.from_config(config)
    with pytest.raises(BundleError) as refused:
        store.public_key(first)
    assert refused.value.reason == "revoked_key"
    assert store.public_key(second) is not None


def test_unknown_ids_and_broken_keyrings_are_named(tmp_path, capsys):
    directory = tmp_path / "keys"
    code, _, err = keys(capsys, "list", "--dir", str(directory))
    assert code == 66 and "keys create" in err
    keys(capsys, "create", "--dir", str(directory))
    code, _, err = keys(capsys, "revoke", "--dir", str(directory), "0123456789abcdef")
    assert code == 66 and "is not in it" in err
    (directory / "keyring.json").write_text('{"format": "edged-keyring", "keys": [{"id": 1}]}')
    code, _, err = keys(capsys, "list", "--dir", str(directory))
    assert code == 65 and "keyring.json" in err and "Traceback" not in err
