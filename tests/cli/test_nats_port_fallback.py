"""The embedded NATS leaves a taken default port alone; a port the user chose is kept."""

from __future__ import annotations

import pytest

from pqkms import stack
from pqkms.stack import StackSettings, with_fallback_nats_port


@pytest.fixture
def default_port_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PQKMS_NATS_PORT", raising=False)
    monkeypatch.setattr(stack, "port_available", lambda port, host="127.0.0.1": port != 4222)


@pytest.mark.usefixtures("default_port_taken")
def test_default_port_taken_moves_to_a_free_port() -> None:
    moved = with_fallback_nats_port(StackSettings())
    assert moved.nats_port != 4222


@pytest.mark.usefixtures("default_port_taken")
def test_a_port_the_user_asked_for_is_never_changed() -> None:
    assert with_fallback_nats_port(StackSettings(nats_port=4222)).nats_port == 4222
