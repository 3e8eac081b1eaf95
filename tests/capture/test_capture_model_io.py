"""``capture.spool.include_model_io``: each record carries the model's own input and
output for its turbine, so a record can be re-scored offline. Through a running graph:
simulator -> windturbine + onnx -> capture -> disk."""

from __future__ import annotations

import numpy as np
import yaml
from test_pipeline_capture_graph import config_text

from edged.testing import eventually, running_graph
from tests.support import lake


def captured(root) -> list[dict]:
    return lake.records(root)


async def test_records_carry_the_model_input_and_output_behind_their_scores(tmp_path):
    config = yaml.safe_load(config_text(tmp_path))
    config["pipelines"]["wt"]["capture"]["spool"]["include_model_io"] = True
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(config))
    async with running_graph(path) as graph:
        await eventually(lambda: graph.counters.get("capture_uploaded", pipeline="wt") >= 5)
    records = captured(tmp_path / "out")
    assert len(records) >= 5
    for record in records:
        x, y = np.array(record["model_input"]), np.array(record["model_output"])
        # The reference model: W windows of the 6 features as s x s images, reconstructed.
        assert x.shape == y.shape and x.shape[1] == len(record["features"]) == 6
        # The per-feature scores are the mean absolute reconstruction error of exactly
        # these windows (the model's float32 output, as JSON gives it back).
        errors = np.abs(y - x).reshape(len(x), 6, -1).mean(axis=-1).mean(axis=0)
        np.testing.assert_allclose(errors, record["values"], rtol=1e-6)


async def test_off_by_default(tmp_path):
    path = tmp_path / "edged.yaml"
    path.write_text(config_text(tmp_path))
    async with running_graph(path) as graph:
        await eventually(lambda: graph.counters.get("capture_uploaded", pipeline="wt") >= 1)
    assert all("model_input" not in r and "model_output" not in r
               for r in captured(tmp_path / "out"))
