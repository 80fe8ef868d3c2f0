"""The Python client gives up on a NATS it cannot reach, with one clear error."""

from __future__ import annotations

import pytest

from pqkms.client import PqkmsClient
from pqkms.nats_embedded import find_free_port


async def test_unreachable_nats_is_a_quick_connection_error() -> None:
    url = f"nats://127.0.0.1:{find_free_port()}"
    with pytest.raises(ConnectionError, match="cannot connect to NATS at"):
        await PqkmsClient.connect(url, "qph_x", connect_timeout=1.5)
