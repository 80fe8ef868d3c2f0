"""What a worker sets up in JetStream at start, tried again until it is there.

A NATS cluster whose nodes have just started answers JetStream requests with 503 until
its nodes have elected a leader, which takes seconds. Workers started alongside it (as
compose.yaml starts them) would otherwise give up on the shared rate limits and the key
events stream for the rest of their lives. Only a server that does not advertise
JetStream at all makes a step's first failure final.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from nats.aio.client import Client

__all__ = ["SetupStep", "JetStreamSetup", "jetstream_advertised"]

_log = structlog.get_logger("pqkms.worker")

RETRY_DELAYS_SECONDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


def jetstream_advertised(connection: Client) -> bool:
    """Whether the server this connection reached says it runs JetStream (its INFO)."""
    info = getattr(connection, "_server_info", None) or {}
    return bool(info.get("jetstream"))


@dataclass(frozen=True, slots=True)
class SetupStep:
    """One thing to set up. ``attempt`` returns whether it is done; it may raise.

    ``unavailable`` runs once, after the first attempt failed, with whether it will be
    tried again (so the step can fail closed meanwhile, or settle for less for good).
    """

    name: str
    attempt: Callable[[], Awaitable[bool]]
    unavailable: Callable[[bool], None]


class JetStreamSetup:
    """Tries every step once at start; retries the ones left in the background."""

    def __init__(self, steps: Sequence[SetupStep],
                 delays: Sequence[float] = RETRY_DELAYS_SECONDS) -> None:
        self._steps = list(steps)
        self._delays = tuple(delays)
        self._task: asyncio.Task[None] | None = None

    async def start(self, connection: Client) -> None:
        """Attempt each step; keep retrying failed ones while JetStream is advertised."""
        retry = jetstream_advertised(connection)
        left: list[SetupStep] = []
        for step in self._steps:
            if await _attempt(step):
                continue
            step.unavailable(retry)
            left.append(step)
        if left and retry:
            self._task = asyncio.create_task(self._retry(left), name="pqkms-jetstream-setup")

    async def _retry(self, left: list[SetupStep]) -> None:
        tries = 0
        while left:
            await asyncio.sleep(self._delays[min(tries, len(self._delays) - 1)])
            tries += 1
            left = [step for step in left if not await _attempt(step)]
        _log.info("jetstream_setup_complete", retries=tries)

    @property
    def pending(self) -> bool:
        """Whether some step is still being retried."""
        return self._task is not None and not self._task.done()

    async def wait(self) -> None:
        """Until every step is done (tests; a worker serves meanwhile)."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        """Stop retrying."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


async def _attempt(step: SetupStep) -> bool:
    try:
        return await step.attempt()
    except Exception as exc:
        _log.debug("jetstream_setup_failed", step=step.name, reason=type(exc).__name__)
        return False
