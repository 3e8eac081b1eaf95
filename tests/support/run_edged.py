"""``edged ARGS`` with its jobs executor paused at a phase, for tests that kill the
daemon there::

    python tests/support/run_edged.py --pause-jobs-at staging run -c edged.yaml

Right after the phase is saved in the journal the executor writes
``<state_dir>/jobs/paused-at-<phase>`` (this process's pid) and waits for good. edged
reads no test switch: the executor takes the pause as its ``on_phase`` hook, and the
daemon's assembly passes none, so this script, in its own process only, has the assembly
build an executor that passes one. Run as a script, it imports nothing of the tests.
"""

from __future__ import annotations

import asyncio
import os
import sys

import structlog

from edged.app import cli
from edged.cloud.jobs import executor

log = structlog.get_logger("edged.tests")


def pausing_executor(at: str) -> type[executor.JobsExecutor]:
    class PausingExecutor(executor.JobsExecutor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, on_phase=self._pause, **kwargs)

        async def _pause(self, phase: str) -> None:
            if phase != at:
                return
            (self.journal.directory / f"paused-at-{phase}").write_text(str(os.getpid()))
            log.warning("jobs_paused_for_test", phase=phase)
            await asyncio.Event().wait()

    return PausingExecutor


def main(argv: list[str]) -> int:
    if argv[:1] == ["--pause-jobs-at"]:
        # edged.cloud.link.build_cloud looks the class up in its module when it builds one.
        executor.JobsExecutor = pausing_executor(argv[1])
        argv = argv[2:]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
