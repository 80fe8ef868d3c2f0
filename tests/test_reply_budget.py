"""schemas.reply_budget: reply bytes in flight, bounded, granted in order."""

from __future__ import annotations

import asyncio

import pytest

from schemas.reply_budget import ReplyBudget

LIMIT = 1000
MESSAGE_LIMIT = 700


def budget() -> ReplyBudget:
    return ReplyBudget(LIMIT, MESSAGE_LIMIT)


def test_replies_of_any_size_are_charged_the_message_limit_others_twice_their_body() -> None:
    charges = ReplyBudget(10**9, MESSAGE_LIMIT)
    assert charges.charge_for("pqkms.v1.kem.encrypt.batch", 10) == MESSAGE_LIMIT
    assert charges.charge_for("pqkms.v1.signature.sign.batch", 10) == MESSAGE_LIMIT
    assert charges.charge_for("pqkms.v1.jobs.results", 10) == MESSAGE_LIMIT
    assert charges.charge_for("pqkms.v1.kms.keys.list", 10) == MESSAGE_LIMIT
    assert charges.charge_for("pqkms.v1.kem.encrypt", 1000) == 64 * 1024 + 2000


def test_no_charge_is_over_the_whole_budget() -> None:
    # ... so that any one request can always go, alone.
    assert budget().charge_for("pqkms.v1.kem.encrypt", 10**6) == LIMIT


async def test_requests_that_fit_go_at_once() -> None:
    spent = budget()
    await spent.take(600, 1)
    await spent.take(400, 1)
    assert spent.spent == LIMIT
    spent.give_back(600)
    assert spent.spent == 400


async def test_a_request_that_does_not_fit_waits_and_later_ones_wait_behind_it() -> None:
    spent = budget()
    await spent.take(800, 1)
    big = asyncio.ensure_future(spent.take(500, 1))
    small = asyncio.ensure_future(spent.take(100, 1))  # would fit, but came later
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    spent.give_back(800)
    await asyncio.wait_for(asyncio.gather(big, small), 1)
    assert spent.spent == 600


async def test_a_cancelled_wait_leaves_nothing_spent_and_lets_the_next_go() -> None:
    spent = budget()
    await spent.take(900, 1)
    first = asyncio.ensure_future(spent.take(500, 1))
    second = asyncio.ensure_future(spent.take(50, 1))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, 1)  # no longer behind the cancelled one
    with pytest.raises(asyncio.CancelledError):
        await first
    assert spent.spent == 950
    spent.give_back(950)
    assert spent.spent == 0


async def test_a_grant_cancelled_before_it_is_used_is_given_back() -> None:
    spent = budget()
    await spent.take(900, 1)
    waiting = asyncio.ensure_future(spent.take(500, 1))
    await asyncio.sleep(0)
    spent.give_back(900)  # granted: 500 spent for it ...
    waiting.cancel()  # ... and cancelled before it ran on
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert spent.spent == 0


async def test_a_wait_past_its_timeout_fails_and_spends_nothing() -> None:
    spent = budget()
    await spent.take(900, 1)
    with pytest.raises(TimeoutError):
        await spent.take(500, 0.01)
    await spent.take(100, 0.01)  # nobody waits ahead of it any more
    assert spent.spent == LIMIT
