"""edged-cloud train: real PyTorch training on a tiny synthetic farm, the ONNX export
checked against PyTorch, and the exported model decides in the device's pipeline."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from edged.model import golden  # noqa: E402
from edged.testing import build_component  # noqa: E402
from edged.windturbine.features import WindTurbineParams  # noqa: E402
from edged_cloud.cli import main  # noqa: E402
from edged_cloud.train.export import TOLERANCE  # noqa: E402

EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    assert main(["data", "synth", "-o", str(root / "data"), "--turbines", "2", "--seconds",
                 "90", "--fault-seconds", "5"]) == 0
    assert main(["train", str(root / "data"), "-o", str(root / "out"), "--epochs",
                 str(EPOCHS), "--seed", "1", "--threads", "1"]) == 0
    return root / "out"


def test_train_writes_what_package_reads(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"model.onnx", "preprocessing.json", "golden.npz", "validation.npz", "model.pt",
            "report.json", "loss.png", "errors.png"} <= names
    for plot in ("loss.png", "errors.png"):
        assert (trained / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((trained / "report.json").read_text())
    assert len(report["history"]["train_loss"]) == EPOCHS
    assert 0 <= report["onnx_vs_torch_max_abs"] < 1e-2
    assert report["onnx_vs_torch_scaled"] <= TOLERANCE
    assert report["data"]["held_out_faulty"] > 0
    for name, digest in report["files"].items():
        assert hashlib.sha256((trained / name).read_bytes()).hexdigest() == digest
    preprocessing = json.loads((trained / "preprocessing.json").read_text())
    params = WindTurbineParams.from_manifest(preprocessing)
    assert preprocessing["thresholds"] == report["statistics"]["thresholds"]
    assert np.all(params.thresholds > 0)


def test_training_is_seeded(trained, tmp_path):
    data = trained.parent / "data"
    assert main(["train", str(data), "-o", str(tmp_path), "--epochs", str(EPOCHS),
                 "--seed", "1", "--threads", "1"]) == 0
    assert (tmp_path / "preprocessing.json").read_text() == \
        (trained / "preprocessing.json").read_text()


def test_quantile_thresholds_keep_healthy_turbines_quiet(tmp_path):
    """The reference's rule (mean error) flags most healthy held-out decisions on data like
    the training set; --thresholds quantile keeps them under while the faults are caught.
    (Long enough a farm that healthy decisions are held out apart from the trained ones.)"""
    assert main(["data", "synth", "-o", str(tmp_path / "data"), "--turbines", "2",
                 "--seconds", "240", "--fault-seconds", "5"]) == 0
    reports = {}
    for rule in ("reference", "quantile"):
        assert main(["train", str(tmp_path / "data"), "-o", str(tmp_path / rule),
                     "--epochs", str(EPOCHS), "--seed", "1", "--threads", "1",
                     "--thresholds", rule]) == 0
        reports[rule] = json.loads((tmp_path / rule / "report.json").read_text())
    assert reports["quantile"]["options"]["thresholds"] == {
        "rule": "quantile", "quantile": 0.999, "margin": 2.0}
    assert reports["reference"]["data"]["held_out_healthy"] > 0
    assert reports["reference"]["held_out"]["false_alarm_rate"] > 0.5
    held = reports["quantile"]["held_out"]
    assert held["false_alarm_rate"] <= 0.01
    # Decisions at a fault's edges see it in part of their window: most, not all.
    assert set(held["detection_rate"]) == {"vibration", "rotation", "voltage"}
    assert all(rate >= 0.9 for rate in held["detection_rate"].values())


def _model_dir(trained: Path, target: Path) -> Path:
    """A model directory as edged-cloud package lays it out (manifest + files)."""
    target.mkdir()
    for name in ("model.onnx", "golden.npz"):
        shutil.copy(trained / name, target / name)
    tensor = {"dtype": "float32", "shape": [None, 6, 10, 10]}
    manifest = {
        "name": "windturbine", "version": 2, "format": "onnx", "model": "model.onnx",
        "inputs": [{"name": "input", **tensor}], "outputs": [{"name": "output", **tensor}],
        "preprocessing": json.loads((trained / "preprocessing.json").read_text()),
        "golden": "golden.npz",
        "files": {n: hashlib.sha256((target / n).read_bytes()).hexdigest()
                  for n in ("model.onnx", "golden.npz")},
    }
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


async def test_the_exported_model_decides_in_the_device_pipeline(trained, tmp_path):
    directory = _model_dir(trained, tmp_path / "model")
    backend = build_component("inference", {"type": "onnx", "model": str(directory)}, tmp_path)
    stage = build_component("preprocessor", {"type": "windturbine"}, tmp_path,
                            manifest=backend.manifest)
    async with backend:
        golden.check(directory / "golden.npz", backend.predict)
        with np.load(trained / "validation.npz") as validation:
            x, labels = validation["inputs"], validation["labels"]
            expected = validation["outputs"]
        y = backend.predict(x)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)
    scores = stage.score(x, y, len(x))
    flagged = scores.anomalous.any(axis=1)
    # Faults overwrite readings with values far outside a healthy turbine's: even a model
    # trained for two epochs flags every faulty decision.
    assert flagged[labels != "healthy"].all()
    assert np.array_equal(scores.thresholds, stage.params.thresholds)


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["train", "{tmp}/nope", "-o", "{tmp}/out"], 66, "no such dataset"),
    (["train", "{tmp}/junk", "-o", "{tmp}/out"], 65, "not a prepared dataset"),
    (["train", "{tmp}/faulty", "-o", "{tmp}/out"], 65, "healthy decisions to train on"),
    (["train", "{tmp}/nope", "-o", "{tmp}/out", "--epochs", "0"], 65, "--epochs"),
])
def test_users_mistakes_are_one_line_errors(argv, status, message, tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "dataset.npz").write_bytes(b"not a zip")
    assert main(["data", "synth", "-o", str(tmp_path / "faulty"), "--turbines", "1",
                 "--seconds", "30", "--faults", "0:rotation@0-30"]) == 0
    capsys.readouterr()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_sagemaker_container_trains_from_sagemakers_paths(trained, tmp_path, monkeypatch):
    """What the training image runs: the dataset in the train channel, the options as
    SageMaker passes hyperparameters (JSON strings), OUTDIR in /opt/ml/model."""
    from edged_cloud.train import container

    channel = tmp_path / "input" / "data" / "train"
    channel.mkdir(parents=True)
    shutil.copy(trained.parent / "data" / "dataset.npz", channel)
    (tmp_path / "input" / "config").mkdir()
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {"epochs": "1", "seed": "1", "threads": "1", "version": "3", "denoise": '"reference"'}))
    monkeypatch.setattr(container, "PREFIX", tmp_path)
    assert container.main() == 0
    report = json.loads((tmp_path / "model" / "report.json").read_text())
    assert report["version"] == 3 and len(report["history"]["train_loss"]) == 1
    assert (tmp_path / "model" / "model.onnx").is_file()
