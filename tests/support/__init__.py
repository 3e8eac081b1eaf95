"""edged's own test rig: brokers, fake cloud services, child processes (``tests.support``).

It lives with the tests, never in the device package: it starts mosquitto (installing it
with apt when it may), moto's S3, HTTP servers with faults and a fake AWS IoT Jobs
service. What a plugin author needs (run a component or a small graph, ``eventually``, a
farm config) is ``edged.testing``. pytest puts the checkout on ``sys.path``
(``pythonpath`` in pyproject.toml); the benchmarks insert it themselves.
"""

from tests.support.brokers import Mosquitto, TestPki, free_port, make_pki, wait_for_port
from tests.support.mqtt_peer import MqttPeer
from tests.support.processes import (
    EdgedProcess,
    LoggedProcess,
    Measured,
    hostile_configs,
    run_measured,
)
from tests.support.servers import BundleServer, S3Server
from tests.support.systemd import unit_directive, unit_directives

__all__ = [
    "BundleServer", "EdgedProcess", "LoggedProcess", "Measured", "Mosquitto", "MqttPeer",
    "S3Server", "TestPki", "free_port", "hostile_configs", "make_pki", "run_measured",
    "unit_directive", "unit_directives", "wait_for_port",
]
