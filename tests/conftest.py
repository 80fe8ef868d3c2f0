"""Shared fixtures: a real stack (nats-server + 2 worker processes) per test session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from schemas.algorithms import Plan
from tests.support.stack import LocalStack, NatsCaller


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    """nats-server, two worker processes and the HTTP bridge, shared by the session."""
    local = LocalStack(Path(tmp_path_factory.mktemp("stack")))
    try:
        await local.start(workers=2, bridge=_bridge_available())
        yield local
    finally:
        local.stop()


def _bridge_available() -> bool:
    try:
        import api_bridge.main  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
async def nats_client(stack: LocalStack) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(stack.nats_url)
    yield client
    await client.close()


@pytest.fixture
async def api_key(stack: LocalStack) -> str:
    """A fresh enterprise tenant (no rate or version limits) per test."""
    return await stack.create_tenant(Plan.ENTERPRISE)


@pytest.fixture
async def call(nats_client: nats.NATS, api_key: str) -> NatsCaller:
    """Contract requests over NATS as a fresh tenant."""
    return NatsCaller(nats_client, api_key)
