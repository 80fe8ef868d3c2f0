"""How many bytes of replies a NATS connection lets be on their way to it at once.

nats-server buffers what it has for a connection that does not read fast enough, up to
its ``max_pending`` (64 MB by default), and then closes that connection as a slow
consumer — every request in flight on it fails. A process that reads its replies on an
event loop busy with other work (the bridge parses and writes HTTP; the Python client
runs its caller's code) is outrun by a burst of large replies: a hundred encryptions of
1 MiB are 140 MB. So the bridge and the Python client take each request's likely reply
size from this budget before they send it, and give it back when its reply (or its
failure) is in; a request that does not fit waits its turn, first come first served.

A reply's likely size: a batch's, a job chunk's results read back and a key list may reach
the whole message limit; any other reply is about as long as its request (an encryption's
ciphertext adds 1.1 KB to the plaintext) or short, so it is charged twice its request
and 64 KiB. A charge is never more than the whole budget, so any one request can always
go alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from schemas.batch import BATCH_OF
from schemas.subjects import Subject

__all__ = ["ReplyBudget"]

_BASE_CHARGE = 64 * 1024
# Replies that may reach the message limit whatever the request's size: a batch's
# results, a job chunk's results read back, and a key list (it has no pages).
_LARGE_REPLY_SUBJECTS = frozenset(
    [*(subject.value for subject in BATCH_OF), Subject.JOBS_RESULTS.value,
     Subject.KEYS_LIST.value]
)


@dataclass(slots=True, eq=False)
class _Waiting:
    charge: int
    granted: asyncio.Future[None]


class ReplyBudget:
    """Reply bytes in flight, bounded; ``take`` waits (in order) while they are spent."""

    def __init__(self, limit: int, message_limit: int) -> None:
        self._limit = limit
        self._message_limit = message_limit
        self._spent = 0
        self._waiting: deque[_Waiting] = deque()

    @property
    def spent(self) -> int:
        """Bytes charged to requests in flight."""
        return self._spent

    def charge_for(self, subject: str, payload_size: int) -> int:
        """What a request on ``subject`` with a ``payload_size``-byte body is charged."""
        if subject in _LARGE_REPLY_SUBJECTS:
            likely = self._message_limit
        else:
            likely = _BASE_CHARGE + 2 * payload_size
        return min(likely, self._limit)

    async def take(self, charge: int, timeout: float) -> None:
        """Spend ``charge`` bytes, waiting up to ``timeout`` seconds for earlier requests'
        replies if need be (then ``TimeoutError``, nothing spent)."""
        if not self._waiting and self._spent + charge <= self._limit:
            self._spent += charge
            return
        waiting = _Waiting(charge, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        try:
            async with asyncio.timeout(timeout):
                await waiting.granted
        except (asyncio.CancelledError, TimeoutError):
            if not waiting.granted.cancelled():
                self.give_back(charge)  # granted, then cancelled before it was used
            else:
                if waiting in self._waiting:
                    self._waiting.remove(waiting)
                self._grant()  # those behind it may fit now
            raise

    def give_back(self, charge: int) -> None:
        """Return a request's charge (its reply is in, or it failed)."""
        self._spent -= charge
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._spent + self._waiting[0].charge <= self._limit:
            waiting = self._waiting.popleft()
            if waiting.granted.done():
                continue  # its request was cancelled meanwhile
            self._spent += waiting.charge
            waiting.granted.set_result(None)
