"""Fixtures shared by the whole suite: real parts, started by the tests."""

import os
import signal

import pytest
from hypothesis import HealthCheck, settings

# The daemon's process settings (BLAS on one thread) before anything loads numpy.
import edged.app  # noqa: F401
from tests.support import Mosquitto

# Property-based tests of the decoders of untrusted input are marked `fuzz`. `make test`
# runs them seeded and small (the same examples every run, so CI never flakes on a new
# one); `make fuzz` runs many more, randomly.
settings.register_profile(
    "ci", max_examples=150, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A shell starts a background job with SIGINT ignored, and a Python started so keeps
# ignoring it, as does every child: tests that stop an edged command with ^C would then
# wait for nothing. The suite runs as if started in the foreground.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh mosquitto broker on a free loopback port, stopped after the test."""
    with Mosquitto(tmp_path) as broker:
        yield broker
