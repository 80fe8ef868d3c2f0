"""Every JetStream store key starts nats-server, and a store keeps opening across starts.

nats-server parses a variable's value as configuration: a key starting with ``-`` (one
``secrets.token_urlsafe`` key in 64) once stopped ``pqkms up`` from ever starting.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import nats
import pytest

from pqkms.nats_embedded import load_or_create_store_key, start_nats_server


async def _publish_then_read(store: Path, key: str, *, publish: bool) -> bytes:
    server = start_nats_server(store, store_key=key)
    try:
        client = await nats.connect(server.url)
        js = client.jetstream()
        if publish:
            await js.add_stream(name="KEPT", subjects=["kept"])
            await js.publish("kept", b"still here")
        data = (await js.get_msg("KEPT", 1)).data
        await client.close()
        return data
    finally:
        server.stop()


@pytest.mark.parametrize("first", ["-", "3", "a", "_"])
async def test_any_key_starts_the_server_and_reopens_its_store(tmp_path: Path,
                                                               first: str) -> None:
    key = first + secrets.token_urlsafe(32)
    assert await _publish_then_read(tmp_path, key, publish=True) == b"still here"
    assert await _publish_then_read(tmp_path, key, publish=False) == b"still here"


def test_a_key_file_with_other_characters_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jetstream.key").write_text('"' + secrets.token_urlsafe(32) + '"\n')
    with pytest.raises(ValueError, match="does not hold a JetStream store key"):
        load_or_create_store_key(tmp_path)
