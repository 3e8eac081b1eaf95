"""``edged-cloud optimize``: real ONNX Runtime optimisation and int8 quantisation of the
reference model, judged by the device's decision rule on held-out simulator windows; a
candidate below the agreement gate is refused and nothing is written."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest

from edged_cloud import cli
from edged_cloud.model_source import predict, read_source
from edged_cloud.optimize import DecisionRule, agreement, needed_windows
from tests.support import training_out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return training_out.make(tmp_path_factory.mktemp("train") / "out")


def optimize(capsys, *argv):
    code = cli.main(["optimize", *argv, "--repeats", "2", "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else None), err


def test_graph_optimisation_keeps_every_decision_and_reports_the_speed(trained, tmp_path,
                                                                        capsys):
    out = tmp_path / "opt"
    code, report, err = optimize(capsys, str(trained), "-o", str(out), "--quantize", "none")
    assert code == 0, err
    assert report["accepted"] and report["quantization"] == "none"
    assert report["agreement"] == 1.0 and report["windows"] == 304
    assert report["speedup"] > 0 and report["fp32_us_per_window"] > 0
    assert report["bench"] == {"batch": 16, "threads": 1, "repeats": 2, "windows": 256,
                               "statistic": "median"}
    # windturbine-v1 has no transposed convolution left to rewrite.
    assert report["graph_rewrite"]["rewritten"]["conv_transpose_as_conv"] == 0
    # basic: standard ONNX operators only, nothing only ONNX Runtime runs.
    model = onnx.load(out / "model.onnx")
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert json.loads((out / "optimize.json").read_text())["agreement"] == 1.0
    source = read_source(out)  # what package reads: the training output's layout
    assert source.validation is not None and source.name == "windturbine"
    rule = DecisionRule(source)
    x = source.validation
    np.testing.assert_array_equal(rule.decide(x, predict(out / "model.onnx", x)),
                                  rule.decide(x, predict(trained / "model.onnx", x)))


def with_transposed_convolutions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each Conv of pads 0 (windturbine-v1's decoder) as the ConvTranspose
    that computes the same: weights' channels swapped and kernel flipped, pads k - 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Conv" or any(attrs["pads"]):
            continue
        w = onnx.numpy_helper.to_array(weights[node.input[1]])
        weights[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(
            np.ascontiguousarray(np.flip(w.swapaxes(0, 1), axis=(2, 3))), node.input[1]))
        node.op_type = "ConvTranspose"
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("kernel_shape", [2, 2]),
                               onnx.helper.make_attribute("pads", [1, 1, 1, 1])])
    del out.graph.value_info[:]
    onnx.checker.check_model(out, full_check=True)
    return out


def test_transposed_convolutions_are_rewritten_before_the_candidates(trained, tmp_path,
                                                                     capsys):
    source = tmp_path / "source"
    shutil.copytree(trained, source)
    original = with_transposed_convolutions(onnx.load(trained / "model.onnx"))
    assert [n.op_type for n in original.graph.node].count("ConvTranspose") == 3
    onnx.save(original, source / "model.onnx")
    out = tmp_path / "opt"
    code, report, err = optimize(capsys, str(source), "-o", str(out), "--quantize", "none")
    assert code == 0, err
    assert report["graph_rewrite"] == {
        "rewritten": {"conv_transpose_as_conv": 3, "crop_into_conv_pads": 0,
                      "crop_as_slice": 0},
        "kept": {}}
    assert report["agreement"] == 1.0
    assert "ConvTranspose" not in {n.op_type for n in onnx.load(out / "model.onnx").graph.node}
    assert cli.main(["optimize", str(source), "-o", str(tmp_path / "text"), "--quantize",
                     "none", "--repeats", "1"]) == 0
    assert ("graph rewrite: conv_transpose_as_conv 3, crop_into_conv_pads 0, crop_as_slice 0;"
            " ConvTranspose kept: none") in capsys.readouterr().out


def test_int8_below_the_gate_is_refused_naming_the_agreement(trained, tmp_path, capsys):
    out = tmp_path / "opt"
    code, report, err = optimize(capsys, str(trained), "-o", str(out), "--quantize", "static")
    assert code == 1
    assert not report["accepted"] and report["agreement"] < 0.995
    shown = re.search(r"agree with fp32 on ([\d.]+)% of 304 validation windows", err)
    assert shown and float(shown[1]) == pytest.approx(report["agreement"] * 100, abs=0.01)
    assert "below the required 99.50%" in err
    assert not out.exists()
    # Where int8 goes wrong, measured by label: the fp32 model flags every feature of a
    # faulty window, int8 saturates and flags fewer.
    assert report["candidates"][0]["by_label"]["healthy"] > report["agreement"]


def test_auto_picks_a_candidate_that_passes(trained, tmp_path, capsys):
    code, report, err = optimize(capsys, str(trained), "-o", str(tmp_path / "opt"))
    assert code == 0, err
    names = [c["quantization"] for c in report["candidates"]]
    assert names == ["none", "dynamic", "static"]
    chosen = next(c for c in report["candidates"] if c["quantization"] == report["quantization"])
    assert chosen["passed"] and report["agreement"] >= 0.995


def test_a_lower_gate_lets_int8_through(trained, tmp_path, capsys):
    code, report, err = optimize(capsys, str(trained), "-o", str(tmp_path / "opt"),
                                 "--quantize", "static", "--min-agreement", "50%")
    assert code == 0, err
    assert report["quantization"] == "static" and report["min_agreement"] == 0.5
    model = onnx.load(tmp_path / "opt" / "model.onnx")
    assert "QLinearConv" in {n.op_type for n in model.graph.node}
    # Its golden pairs are the int8 model's own, checked by the device's golden rule.
    from edged.model import golden

    assert golden.check(tmp_path / "opt" / "golden.npz",
                        lambda x: predict(tmp_path / "opt" / "model.onnx", x)) == 24


def test_too_few_windows_for_the_gate_are_refused(tmp_path, capsys):
    # windturbine-v1's own golden inputs are its only held-out windows: too few.
    code, _, err = optimize(capsys, "builtin:windturbine-v1", "-o", str(tmp_path / "o"))
    assert code == 65
    assert "cannot show 99.50% agreement" in err and "at least 200" in err


def test_mistakes_are_named(trained, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    code, _, err = optimize(capsys, str(trained), "-o", str(busy))
    assert code == 1 and "not empty" in err
    code, _, err = optimize(capsys, str(tmp_path / "absent"), "-o", str(tmp_path / "o"))
    assert code == 66 and "no such directory" in err
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((300, 6, 5, 5), np.float32))
    code, _, err = optimize(capsys, str(trained), "-o", str(tmp_path / "o"),
                            "--validation", str(bad))
    assert code == 65 and "the model takes (n, 6, 10, 10)" in err


def test_agreement_counts_a_decision_as_all_its_features():
    ref = np.zeros((4, 6), bool)
    cand = ref.copy()
    cand[1, 5] = True
    found = agreement(ref, cand, np.array(["healthy", "healthy", "voltage", "voltage"]))
    assert found["agreement"] == 0.75 and found["disagreements"] == 1
    assert found["feature_agreement"] == pytest.approx(23 / 24)
    assert found["by_label"] == {"healthy": 0.5, "voltage": 1.0}
    assert needed_windows(0.995) == 200 and needed_windows(1.0) == 1
