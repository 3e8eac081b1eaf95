"""docs/bundle.md stays honest: its trust sample validates, and it names every reason."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from edged.model.bundle import TrustConfig
from edged.model.bundle.errors import REASONS

PAGE = Path(__file__).resolve().parents[3] / "docs" / "bundle.md"


def test_the_trust_sample_validates():
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        TrustConfig.model_validate(yaml.safe_load(block)["trust"])


def test_every_reason_is_documented():
    section = PAGE.read_text().split("## Reasons", 1)[1]
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))
    assert rows == REASONS
