"""Ports handed to servers that start a moment later are free and out of the kernel's way."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pqkms import nats_embedded
from pqkms.nats_embedded import find_free_port

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_the_port_can_be_bound() -> None:
    port = find_free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.skipif(not EPHEMERAL_RANGE.exists(), reason="Linux only")
def test_the_port_is_below_the_range_outgoing_connections_use() -> None:
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    assert all(find_free_port() < low for _ in range(50))


def test_a_taken_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        # The only candidate is taken: the kernel's choice is the answer.
        monkeypatch.setattr(nats_embedded, "_ports_below_ephemeral_range",
                            lambda: range(taken, taken + 1))
        assert find_free_port() != taken


def test_without_a_readable_range_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(nats_embedded, "_EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    port = find_free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
