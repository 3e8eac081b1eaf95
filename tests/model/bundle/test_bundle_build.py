"""The builder, the keys and trust configuration, and the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edged.base.errors import ConfigError, ModelError
from edged.model.bundle import (
    TrustConfig,
    TrustStore,
    build_bundle,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)
from edged.model.bundle.__main__ import main
from edged.model.bundle.keys import public_pem
from edged.model.package import resolve_model_path


def test_the_build_is_reproducible(signed):
    again = build_bundle(signed.model_dir, signed.tmp / "again.tar.gz", signed.key)
    assert again.read_bytes() == signed.bundle.read_bytes()


def test_the_archive_layout(signed):
    with tarfile.open(signed.bundle) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {m.name for m in members} == {"ATTRIBUTION.md", "golden.npz", "manifest.json",
                                         "manifest.sig", "model.onnx"}
    assert all(m.isreg() and m.mtime == 0 and m.uid == m.gid == 0 and m.mode == 0o644
               for m in members)
    assert signed.bundle.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_the_builder_refuses_subdirectories_and_links(signed):
    (signed.model_dir / "sub").mkdir()
    with pytest.raises(ModelError, match="plain top-level files"):
        build_bundle(signed.model_dir, signed.tmp / "x.tar.gz", signed.key)
    (signed.model_dir / "sub").rmdir()
    (signed.model_dir / "link").symlink_to(signed.model_dir / "model.onnx")
    with pytest.raises(ModelError, match="plain top-level files"):
        build_bundle(signed.model_dir, signed.tmp / "x.tar.gz", signed.key)


def test_the_builder_needs_the_model_file(signed):
    (signed.model_dir / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model\.onnx"):
        build_bundle(signed.model_dir, signed.tmp / "x.tar.gz", signed.key)
    assert not (signed.tmp / "x.tar.gz").exists()


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    private, public = generate_keypair(tmp_path / "keys")
    assert os.stat(private).st_mode & 0o777 == 0o600
    key = load_private_key(private)
    assert key_id(load_public_key(public)) == key_id(key.public_key())
    assert len(key_id(key.public_key())) == 16
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "keys")


def test_trust_from_a_directory_and_a_list(tmp_path):
    a, b, c = (Ed25519PrivateKey.generate().public_key() for _ in range(3))
    keys = tmp_path / "trusted"
    keys.mkdir()
    (keys / "a.pem").write_bytes(public_pem(a))
    (keys / "README").write_text("not a key, ignored")
    (tmp_path / "c.pub").write_bytes(public_pem(c))
    config = TrustConfig.model_validate({"keys_dir": str(keys),
                                         "keys": [public_pem(b).decode(),
                                                  str(tmp_path / "c.pub")]})
    store = TrustStore.from_config(config)
    assert set(store.keys) == {key_id(a), key_id(b), key_id(c)}


def test_the_keygen_directory_can_be_the_trust_directory(tmp_path):
    """keygen puts both halves in one folder; trusting that folder takes the public key
    and skips the private one."""
    private, public = generate_keypair(tmp_path / "keys")
    store = TrustStore.from_config(TrustConfig(keys_dir=tmp_path / "keys"))
    assert set(store.keys) == {key_id(load_public_key(public))}
    assert private.exists()


def test_trust_configuration_errors(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError) as caught:
        TrustStore.from_config(TrustConfig(keys_dir=tmp_path / "missing", keys=[str(bad)]))
    assert len(caught.value.problems) == 2
    with pytest.raises(ValidationError):
        TrustConfig(revoked=["not-a-key-id"])
    with pytest.raises(ValidationError):
        TrustConfig.model_validate({"trusted": []})


def test_cli_keygen_build_verify_round_trip(tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(resolve_model_path("builtin:windturbine-v1"), model)
    assert main(["keygen", "-o", str(tmp_path / "keys")]) == 0
    kid = capsys.readouterr().out.split("key_id ")[1].strip()
    out = tmp_path / "bundle.tar.gz"
    assert main(["build", str(model), "-k", str(tmp_path / "keys" / "signing.key.pem"),
                 "-o", str(out)]) == 0
    assert out.is_file()
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(tmp_path / "keys" / "signing.pub.pem", trusted)
    capsys.readouterr()
    assert main(["verify", str(out), "--trust", str(trusted), "--installed", str(model),
                 "--installed-version", "0"]) == 0
    assert capsys.readouterr().out == "OK windturbine version 1\n"
    assert main(["verify", str(out), "--trust", str(trusted), "--installed", str(model)]) == 1
    assert capsys.readouterr().err.startswith("REJECTED not_newer:")
    assert main(["verify", str(out), "--trust", str(trusted), "--revoked", kid]) == 1
    assert capsys.readouterr().err.startswith("REJECTED revoked_key:")
    # The module runs as a program too (what cloud_tools will call).
    result = subprocess.run([sys.executable, "-m", "edged.model.bundle", "verify", str(out),
                             "--trust", str(tmp_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("REJECTED unknown_key:"), result.stderr
