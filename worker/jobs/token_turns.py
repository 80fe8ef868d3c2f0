"""Per tenant, the one chunk of a worker that takes its rate-limit tokens at a time.

A chunk that has to wait for its tenant's tokens leaves the runner's loop that fetched it
(``JobRunner``), so that a rate-limited tenant's job cannot hold up every other tenant's.
So that a worker does not pile up waiting chunks instead, a tenant takes its tokens for
one chunk at a time in a worker: a second chunk of the tenant waits for the first one's
first attempt (which usually gets the tokens at once), and once a chunk of the tenant
waits for tokens, the tenant's other chunks are handed back to JetStream, before they
are authenticated or charged, to come back about when the waiting chunk will be done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["SHORTEST_HAND_BACK_SECONDS", "TenantWaiting", "TokenTurn", "TokenTurns"]

SHORTEST_HAND_BACK_SECONDS = 1.0


class TenantWaiting(Exception):
    """Another chunk of the tenant waits for tokens in this worker: hand this one back to
    JetStream for ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        super().__init__(f"the tenant's tokens are awaited by another chunk; back in {delay} s")


@dataclass(eq=False, slots=True)
class TokenTurn:
    """One chunk's turn at its tenant's tokens."""

    tenant_id: str
    remaining: int  # tokens still to take
    rate_per_second: float
    waiting: bool = False
    parked: bool = False  # waiting without holding a loop
    # Set once the chunk waits for tokens or its turn ends.
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class TokenTurns:
    """The turns of one worker's chunks, one per tenant at most.

    ``longest_delay`` caps how long a chunk is handed back for (the ack wait is a good
    one: the estimate is rough, so the chunk should come back and look again).
    ``most_parked`` caps the chunks waiting without holding a loop: each keeps its
    message and items in memory. A chunk that would be one too many waits in its loop.
    """

    def __init__(self, longest_delay: float, most_parked: int) -> None:
        self._turns: dict[str, TokenTurn] = {}
        self._longest_delay = max(SHORTEST_HAND_BACK_SECONDS, longest_delay)
        self._most_parked = most_parked
        self._parked = 0

    @property
    def parked(self) -> int:
        """Chunks waiting for tokens without holding a loop."""
        return self._parked

    def check(self, tenant_id: str) -> None:
        """Raise :class:`TenantWaiting` when a chunk of the tenant waits for tokens here."""
        current = self._turns.get(tenant_id)
        if current is not None and current.waiting:
            raise TenantWaiting(self._hand_back_delay(current))

    async def take_turn(self, tenant_id: str, tokens: int, rate_per_second: float) -> TokenTurn:
        """The tenant's turn for a chunk of ``tokens`` items, once no other chunk of the
        tenant is taking tokens here; :class:`TenantWaiting` when another one waits for
        them. Every turn must be given back with :meth:`end`."""
        while (current := self._turns.get(tenant_id)) is not None:
            if current.waiting:
                raise TenantWaiting(self._hand_back_delay(current))
            await current.settled.wait()
        turn = self._turns[tenant_id] = TokenTurn(tenant_id, tokens, rate_per_second)
        return turn

    def wait_for_tokens(self, turn: TokenTurn) -> bool:
        """The turn's chunk waits for tokens: from now on the tenant's other chunks are
        handed back. Returns whether the chunk may leave its loop (it is, or now is,
        parked); ``False`` while ``most_parked`` chunks are parked already."""
        if not turn.waiting:
            turn.waiting = True
            turn.settled.set()
        if not turn.parked and self._parked < self._most_parked:
            turn.parked = True
            self._parked += 1
        return turn.parked

    def end(self, turn: TokenTurn) -> None:
        """The turn's chunk has all its tokens, or gave up."""
        if turn.parked:
            turn.parked = False
            self._parked -= 1
        if self._turns.get(turn.tenant_id) is turn:
            del self._turns[turn.tenant_id]
        turn.settled.set()

    def _hand_back_delay(self, waiting: TokenTurn) -> float:
        """About how long the waiting chunk still needs, within bounds."""
        rate = waiting.rate_per_second
        needed = waiting.remaining / rate if rate > 0 else self._longest_delay
        return min(max(needed, SHORTEST_HAND_BACK_SECONDS), self._longest_delay)
