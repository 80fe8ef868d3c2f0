"""Shared fixtures: a real stack (nats-server + worker processes + bridge) per backend.

The session ``stack`` runs once per database backend, so every test that uses ``stack``,
``call`` or ``api_key`` runs on both:

- ``sqlite``: two workers on one SQLite file;
- ``postgres``: four workers on a PostgreSQL database created for the session and
  dropped after it (skipped when PostgreSQL does not answer).

``PQKMS_TEST_BACKENDS=sqlite`` (comma-separated) limits a run to some backends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import nats
import pytest

from pqkms.nats_embedded import EmbeddedNats, start_nats_server
from schemas.algorithms import Plan
from tests.support.stack import (
    LocalStack,
    NatsCaller,
    PostgresUnavailable,
    temporary_postgres_database,
)


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by fixture parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files marked ``long`` first, each file's tests keeping their order: pytest-xdist
    (``--dist loadfile --no-loadscope-reorder``) hands out files in this order, so the
    short ones are left to even out the processes' ends."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


# Backend → worker processes of the session stack.
STACK_WORKERS = {"sqlite": 2, "postgres": 4}


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One bare nats-server for the session (no workers), for tests that bring their own
    subscribers (the bridge's fake worker, a stopping responder...)."""
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


def _backend_params() -> list[object]:
    chosen = os.environ.get("PQKMS_TEST_BACKENDS", ",".join(STACK_WORKERS))
    names = [name.strip() for name in chosen.split(",") if name.strip() in STACK_WORKERS]
    return [
        pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else [])
        for name in names
    ]


class _BackendStacks:
    """Each backend's stack, started on first use and kept until the session ends.

    pytest tears a session fixture down when the next test asks for another of its
    parameters; under pytest-xdist, whose processes take a file at a time, that would
    restart both stacks for every file that runs on both backends. A backend that was
    skipped (no PostgreSQL) stays skipped without trying again.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory,
                 resources: AsyncExitStack) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._resources = resources
        self._started: dict[str, LocalStack] = {}
        self._skipped: dict[str, str] = {}

    async def get(self, backend: str) -> LocalStack:
        if backend in self._skipped:
            pytest.skip(self._skipped[backend])
        if backend not in self._started:
            try:
                self._started[backend] = await self._start(backend)
            except pytest.skip.Exception as skipped:
                self._skipped[backend] = str(skipped.msg)
                raise
        local = self._started[backend]
        _fail_if_a_process_is_gone(backend, local)
        return local

    async def _start(self, backend: str) -> LocalStack:
        """The started stack; on a failed start, what was started is stopped at once."""
        root = Path(self._tmp_path_factory.mktemp(f"stack-{backend}"))
        async with AsyncExitStack() as own:
            database_url = None
            if backend == "postgres":
                database_url = await _postgres_or_skip(own, "pqkms_session")
            # Four PostgreSQL workers at 2 x 4 connections leave room under the server's
            # max_connections for the tests' own stores running meanwhile.
            pool = {"PQKMS_DATABASE_POOL_SIZE": "4"} if backend == "postgres" else {}
            local = LocalStack(root, database_url=database_url, extra_env=pool)
            own.callback(local.stop)
            await local.start(workers=STACK_WORKERS[backend], bridge=_bridge_available())
            self._resources.push_async_exit(own.pop_all())
        return local


def _fail_if_a_process_is_gone(backend: str, local: LocalStack) -> None:
    """A shared stack whose worker, bridge or nats-server has exited fails the test that
    asks for it with the reason, rather than with whatever the missing process breaks."""
    for worker in local.workers:
        if worker.poll() is not None:
            pytest.fail(f"the {backend} session stack lost a worker: "
                        f"{local.exit_report(worker)}")
    if local.bridge is not None and local.bridge.poll() is not None:
        pytest.fail(f"the {backend} session stack's bridge exited "
                    f"({local.bridge.returncode}); see {local.root / 'bridge.log'}")
    if local.nats is not None and local.nats.process.poll() is not None:
        pytest.fail(f"the {backend} session stack's nats-server exited "
                    f"({local.nats.process.returncode}); see {local.root / 'nats.log'}")


@pytest.fixture(scope="session")
async def backend_stacks(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[_BackendStacks]:
    async with AsyncExitStack() as resources:
        yield _BackendStacks(tmp_path_factory, resources)


@pytest.fixture(scope="session", params=_backend_params())
async def stack(request: pytest.FixtureRequest, backend_stacks: _BackendStacks) -> LocalStack:
    """nats-server, the backend's workers and the HTTP bridge, shared by the session."""
    backend: str = request.param
    return await backend_stacks.get(backend)


async def _postgres_or_skip(resources: AsyncExitStack, prefix: str) -> str:
    """A temporary database that lives as long as ``resources``; skips without a server."""
    try:
        return await resources.enter_async_context(temporary_postgres_database(prefix))
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def _bridge_available() -> bool:
    try:
        import api_bridge.main  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
async def postgres_database() -> AsyncIterator[str]:
    """A PostgreSQL database of the test's own, dropped afterwards (skip if unreachable)."""
    async with AsyncExitStack() as resources:
        yield await _postgres_or_skip(resources, "pqkms_it")


@pytest.fixture
async def nats_client(stack: LocalStack) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(stack.nats_servers)
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
