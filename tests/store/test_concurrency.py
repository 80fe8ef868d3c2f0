"""Many writers at once: separate engines in one process, and separate processes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import worker
from schemas.algorithms import Algorithm, KeyStatus, Plan
from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.store import KeyStore, MasterKey, NewKeyMaterial

from .conftest import Backend

pytestmark = pytest.mark.long

K = Algorithm.KYBER768
Material = Callable[[], NewKeyMaterial]
PROJECT_ROOT = Path(worker.__file__).resolve().parents[1]


async def _assert_contiguous_one_active(store: KeyStore, tenant_id: str, last: int) -> None:
    keys = await store.list_keys(tenant_id, K)
    assert [k.version for k in keys] == list(range(1, last + 1))
    assert [k.version for k in keys if k.status is KeyStatus.ACTIVE] == [last]
    assert all(k.status is KeyStatus.RETIRED for k in keys[:-1])


async def test_20_concurrent_rotates_from_two_stores(
    backend: Backend, master_key: MasterKey, new_material: Material
) -> None:
    one = await backend.open(master_key)
    two = await backend.open(master_key)
    try:
        tenant, _ = await one.create_tenant("busy", Plan.ENTERPRISE)
        tid = tenant.tenant_id
        await one.generate_first(tid, K, new_material(), None)
        materials = [new_material() for _ in range(20)]
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).rotate(tid, K, material, None)
                for i, material in enumerate(materials)
            )
        )
        new_versions = sorted(record.version for record, _ in results)
        old_versions = sorted(old for _, old in results)
        assert new_versions == list(range(2, 22))
        assert old_versions == list(range(1, 21))
        await _assert_contiguous_one_active(two, tid, 21)
        # Every version kept the seed it was created with: none lost or mixed up.
        by_public_key = {m.public_key: m.seed for m in materials}
        for record, _ in results:
            loaded = await two.load_seed(tid, K, record.version)
            assert loaded is not None
            assert loaded[1] == by_public_key[record.public_key]
    finally:
        await one.close()
        await two.close()


async def test_concurrent_generate_yields_one_key(
    backend: Backend, master_key: MasterKey, new_material: Material
) -> None:
    one = await backend.open(master_key)
    two = await backend.open(master_key)
    try:
        tenant, _ = await one.create_tenant("racers", Plan.FREE)
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).generate_first(tenant.tenant_id, K, new_material(), 3)
                for i in range(10)
            ),
            return_exceptions=True,
        )
        created = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(created) == 1
        assert all(
            isinstance(e, ServiceError) and e.code is ErrorCode.KMS_ACTIVE_KEY_EXISTS
            for e in refused
        )
        await _assert_contiguous_one_active(one, tenant.tenant_id, 1)
    finally:
        await one.close()
        await two.close()


_CHILD = """
import asyncio, base64, json, os, sys
from schemas.algorithms import Algorithm
from worker.store import KeyStore, MasterKey, NewKeyMaterial

async def main() -> None:
    master = MasterKey(base64.b64decode(os.environ["T_MASTER"]))
    store = await KeyStore.open(
        os.environ["T_URL"], master, connect_args=json.loads(os.environ["T_ARGS"])
    )
    try:
        done = await asyncio.gather(*(
            store.rotate(
                os.environ["T_TENANT"], Algorithm.KYBER768,
                NewKeyMaterial(os.urandom(64), os.urandom(32)), None,
            )
            for _ in range(int(os.environ["T_COUNT"]))
        ))
        print(json.dumps([record.version for record, _ in done]))
    finally:
        await store.close()

asyncio.run(main())
"""


async def test_concurrent_rotates_from_separate_processes(
    backend: Backend, master_key: MasterKey, new_material: Material
) -> None:
    store = await backend.open(master_key)
    try:
        tenant, _ = await store.create_tenant("multi", Plan.ENTERPRISE)
        await store.generate_first(tenant.tenant_id, K, new_material(), None)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "T_MASTER": base64.b64encode(master_key.key).decode(),
            "T_URL": backend.url,
            "T_ARGS": json.dumps(backend.connect_args),
            "T_TENANT": tenant.tenant_id,
            "T_COUNT": "8",
        }
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(3)
        ]
        outputs = [await child.communicate() for child in children]
        versions: list[int] = []
        for child, (out, err) in zip(children, outputs, strict=True):
            if child.returncode != 0:
                pytest.fail(f"child failed: {err.decode()[-2000:]}")
            versions.extend(json.loads(out))
        assert sorted(versions) == list(range(2, 26))
        await _assert_contiguous_one_active(store, tenant.tenant_id, 25)
    finally:
        await store.close()
