"""Starting one component under its configured start-up failure policy."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import structlog

from edged.base import retry
from edged.base.errors import ComponentStartError
from edged.plugin.config import StartPolicy

log = structlog.get_logger("edged.startup")


def backoff_delay(policy: StartPolicy, attempt: int) -> float:
    """The policy's delay after failed attempt ``attempt`` (:mod:`edged.base.retry`: full
    jitter, so a fleet restarting together spreads out)."""
    return retry.delay(attempt, policy.backoff_s, policy.max_backoff_s)


async def start_component(stack: AsyncExitStack, label: str, component: Any,
                          policy: StartPolicy) -> bool:
    """Enter ``component`` on ``stack``; True if it started, False if it was disabled.

    Raises :class:`ComponentStartError` when the policy is ``fail`` or retries ran out.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            await stack.enter_async_context(component)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if policy.policy == "disable":
                log.error("component_disabled", component=label, reason=reason)
                return False
            if policy.policy == "fail" or attempt >= policy.attempts:
                raise ComponentStartError(f"{label} failed to start: {reason}") from exc
            delay = backoff_delay(policy, attempt)
            log.warning("component_start_retry", component=label, attempt=attempt,
                        retry_in_s=round(delay, 2), reason=reason)
            await asyncio.sleep(delay)
        else:
            log.debug("component_started", component=label)
            return True
