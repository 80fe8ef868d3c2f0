"""Every binary field's base64: pybase64 reads and writes exactly what the standard library
does for canonical input, and refuses everything that is not canonical standard base64."""

from __future__ import annotations

import base64
import binascii
import random

import pytest

from schemas.fields import b64decode_canonical, b64encode
from worker.services.kem_items import read_kem_item


def _stdlib_reads(text: str) -> bytes | None:
    """What the field read before pybase64: length check, then ``a2b_base64`` strict."""
    if len(text) % 4:
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _reads(text: str) -> bytes | None:
    try:
        return b64decode_canonical(text)
    except ValueError:
        return None


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 31, 32, 33, 1024, 65_537])
def test_round_trip_matches_the_standard_library(size: int) -> None:
    raw = random.Random(size).randbytes(size)
    encoded = b64encode(raw)
    assert encoded == base64.b64encode(raw).decode("ascii")
    assert b64decode_canonical(encoded) == raw


@pytest.mark.parametrize("text", [
    "QQ", "QQ=", "QQ==QQ==", "=QQ=", "Q===", "====", "QQ=A", "QUJD\n", " QUJD", "QU JD",
    "QUJ\u00e9", "QU-_", "QUJD\x00\x00\x00\x00", "AAAA====", "QUJDQQ==AAAA",
])
def test_anything_not_canonical_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        b64decode_canonical(text)


def test_random_strings_read_as_the_standard_library_read_them() -> None:
    # The one difference: a whole quantum of padding after complete data ("AAAA====")
    # was read by binascii's strict mode; it is not canonical and is refused now.
    rng = random.Random(7)
    alphabet = "ABCab019+/=-_ \n\x00\u00e9"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 4, 8, 12])))
        expected = _stdlib_reads(text)
        if text.endswith("===="):
            expected = None
        assert _reads(text) == expected, text


def test_the_lean_batch_reader_refuses_a_padding_only_quantum() -> None:
    item = {"plaintext": "aGVsbG8h====", "key_version": 1}
    assert read_kem_item(item, "plaintext") is None
    assert read_kem_item({"plaintext": "aGVsbG8h", "key_version": 1}, "plaintext") is not None
