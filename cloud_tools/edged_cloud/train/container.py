"""The entry point of a SageMaker training image: ``python -m edged_cloud.train.container``
trains as ``edged-cloud train`` does, from SageMaker's paths (docs/cloud.md, "train")."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from edged_cloud.errors import CloudToolError
from edged_cloud.train.fit import FitOptions
from edged_cloud.train.prepare import ThresholdRule
from edged_cloud.train.run import train

PREFIX = Path(os.environ.get("SM_PREFIX", "/opt/ml"))
_RUN_KEYS = ("holdout", "version", "denoise", "thresholds", "quantile", "margin")


def main() -> int:
    config = PREFIX / "input" / "config" / "hyperparameters.json"
    values = {k: json.loads(v) for k, v in json.loads(config.read_text()).items()}
    run = {k: values.pop(k) for k in _RUN_KEYS if k in values}
    options = FitOptions(**values)
    try:
        train(PREFIX / "input" / "data" / "train", PREFIX / "model", options,
              holdout=run.get("holdout", 0.2), version=run.get("version", 1),
              threshold_approximation=run.get("denoise", "reference") == "reference",
              threshold_rule=ThresholdRule(run.get("thresholds", "reference"),
                                           run.get("quantile", 0.999),
                                           run.get("margin", 2.0)),
              show_progress=False)
    except CloudToolError as exc:
        # SageMaker shows this file's text as the job's FailureReason.
        (PREFIX / "output").mkdir(parents=True, exist_ok=True)
        (PREFIX / "output" / "failure").write_text(str(exc))
        print(exc, file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
