"""``edged-cloud package``: a signed bundle from a training output, its golden pairs computed
by the device's code, checked by the device's verifier in its own process; what a user gets
wrong is named and leaves no bundle behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from edged_cloud import cli
from tests.support import training_out


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("release") / "keys"
    assert cli.main(["keys", "create", "--dir", str(directory)]) == 0
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return training_out.make(tmp_path_factory.mktemp("train") / "out")


def package(capsys, source, out, keydir, *extra):
    code = cli.main(["package", str(source), "-o", str(out), "--key", str(keydir), "--json",
                     *extra])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def device_verify(bundle, keydir, *extra):
    """The device's verifier, as a device runs it: its own process, the trust directory."""
    return subprocess.run([sys.executable, "-m", "edged.model.bundle", "verify", str(bundle),
                           "--trust", str(keydir), *extra],
                          capture_output=True, text=True, timeout=120, check=False)


def members(bundle):
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_a_training_output_becomes_a_bundle_a_device_installs(trained, keydir, tmp_path,
                                                               capsys):
    out = tmp_path / "v2.tar.gz"
    code, result, err = package(capsys, trained, out, keydir, "--version", "2",
                                "--installed", "builtin:windturbine-v1")
    assert code == 0, err
    assert result["verified"] and result["version"] == 2 and result["name"] == "windturbine"
    assert result["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    done = device_verify(out, keydir, "--installed-version", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "OK windturbine version 2\n"
    files = members(out)
    assert set(files) == {"manifest.json", "manifest.sig", "model.onnx", "golden.npz"}
    manifest = json.loads(files["manifest.json"])
    preprocessing = json.loads((trained / "preprocessing.json").read_text())
    assert manifest["preprocessing"] == preprocessing  # statistics and thresholds as trained
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32",
                                   "shape": [None, 6, 10, 10]}]


def test_golden_pairs_are_held_out_windows_of_every_label_run_by_the_model(trained, keydir,
                                                                            tmp_path, capsys):
    out = tmp_path / "b.tar.gz"
    assert package(capsys, trained, out, keydir, "--version", "2", "--golden", "8")[0] == 0
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / "golden.npz").write_bytes(members(out)["golden.npz"])
    with np.load(slot / "golden.npz") as golden:
        inputs, outputs = golden["inputs"], golden["outputs"]
    with np.load(trained / "validation.npz") as held_out:
        windows, labels = held_out["inputs"], held_out["labels"]
    assert len(inputs) == 8
    index = [int(np.flatnonzero((windows == x).all(axis=(1, 2, 3)))[0]) for x in inputs]
    assert {str(labels[i]) for i in index} == {"healthy", "vibration", "rotation", "voltage"}
    import onnxruntime as ort

    session = ort.InferenceSession(str(trained / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(outputs, session.run(None, {"input": inputs})[0],
                               rtol=1e-4, atol=1e-4)


def test_the_same_inputs_give_the_same_bytes(trained, keydir, tmp_path, capsys):
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert package(capsys, trained, first, keydir, "--version", "4")[0] == 0
    assert package(capsys, trained, second, keydir, "--version", "4")[0] == 0
    assert first.read_bytes() == second.read_bytes()


def test_an_optimised_int8_model_packages_and_verifies(trained, keydir, tmp_path, capsys):
    optimised = tmp_path / "opt"
    assert cli.main(["optimize", str(trained), "-o", str(optimised), "--quantize", "static",
                     "--min-agreement", "0.5", "--repeats", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "int8.tar.gz"
    code, result, err = package(capsys, optimised, out, keydir, "--version", "3")
    assert code == 0, err
    assert device_verify(out, keydir).returncode == 0
    manifest = json.loads(members(out)["manifest.json"])
    assert manifest["version"] == 3


def test_shadow_limits_travel_under_the_signature(keydir, tmp_path, capsys):
    out = tmp_path / "s.tar.gz"
    code, result, err = package(capsys, "builtin:windturbine-v1", out, keydir, "--version",
                                "2", "--shadow-max-error-ks", "0.2")
    assert code == 0, err
    assert json.loads(members(out)["manifest.json"])["shadow"] == {"max_error_ks": 0.2}
    code, _, err = package(capsys, "builtin:windturbine-v1", tmp_path / "t.tar.gz", keydir,
                           "--version", "2", "--shadow-max-anomaly-rate-delta", "1.5")
    assert code == 65 and "max_anomaly_rate_delta" in err


def test_a_version_not_newer_than_the_installed_is_refused_and_removed(keydir, tmp_path,
                                                                       capsys):
    out = tmp_path / "v1.tar.gz"
    code, _, err = package(capsys, "builtin:windturbine-v1", out, keydir, "--version", "1",
                           "--installed", "builtin:windturbine-v1")
    assert code == 1
    assert "not_newer" in err and "device's verifier refuses" in err
    assert not out.exists()


def test_mistakes_are_named(trained, keydir, tmp_path, capsys):
    out = tmp_path / "x.tar.gz"
    out.write_bytes(b"already here")
    code, _, err = package(capsys, trained, out, keydir, "--version", "2")
    assert code == 1 and "not overwriting" in err
    assert out.read_bytes() == b"already here"
    code, _, err = package(capsys, tmp_path / "nothing", tmp_path / "y.tar.gz", keydir,
                           "--version", "2")
    assert code == 66
    code, _, err = package(capsys, trained, tmp_path / "y.tar.gz", tmp_path / "no.pem",
                           "--version", "2")
    assert code == 66 and "no such key file" in err
    broken = tmp_path / "broken"
    training_out.make(broken, seconds=40)
    (broken / "preprocessing.json").write_text(json.dumps({"type": "windturbine"}))
    code, _, err = package(capsys, broken, tmp_path / "z.tar.gz", keydir, "--version", "2")
    assert code == 65 and "mean: missing" in err
    assert not (tmp_path / "z.tar.gz").exists()


def test_a_revoked_key_signs_nothing(tmp_path, capsys):
    directory = tmp_path / "keys"
    cli.main(["keys", "create", "--dir", str(directory), "--json"])
    old = json.loads(capsys.readouterr().out)["created"]
    cli.main(["keys", "rotate", "--dir", str(directory)])
    cli.main(["keys", "revoke", "--dir", str(directory), old])
    capsys.readouterr()
    code, _, err = package(capsys, "builtin:windturbine-v1", tmp_path / "b.tar.gz",
                           directory / f"{old}.key.pem", "--version", "2")
    assert code == 1 and f"key {old} is revoked" in err
    code, result, _ = package(capsys, "builtin:windturbine-v1", tmp_path / "b.tar.gz",
                              directory, "--version", "2")
    assert code == 0 and result["key_id"] != old


def test_the_monitoring_section_is_what_a_devices_sketches_take(trained, keydir, tmp_path,
                                                                 capsys):
    """package writes the manifest's monitoring section from the healthy validation
    windows; a device's sketches read it (edged.capture.sketches.Bins) as its bins, and
    its training distribution sums to one per feature."""
    from edged.capture.sketches import Bins

    out = tmp_path / "v2.tar.gz"
    code, _, err = package(capsys, trained, out, keydir, "--version", "2")
    assert code == 0, err
    manifest = json.loads(members(out)["manifest.json"])
    section = manifest["monitoring"]
    bins = Bins.from_manifest(manifest, len(manifest["preprocessing"]["features"]))
    assert bins.input_edges.tolist() == section["input_edges"]
    assert bins.expected is not None
    assert bins.expected.shape == (6, len(section["input_edges"]) + 1)
    assert np.allclose(bins.expected.sum(axis=1), 1.0)
    # Healthy training windows are normalised: most of their mass lies within +-2 std.
    edges = bins.input_edges
    inner = (edges[:-1] >= -2) & (edges[1:] <= 2)
    assert np.all(bins.expected[:, 1:-1][:, inner].sum(axis=1) > 0.5)
