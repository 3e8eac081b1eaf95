"""Fixtures shared by the whole suite: real parts, started by the tests."""

import pytest

from edged.testing import Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh mosquitto broker on a free loopback port, stopped after the test."""
    with Mosquitto(tmp_path) as broker:
        yield broker
