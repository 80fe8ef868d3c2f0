"""The self-describing byte format of kem/encrypt ciphertexts and wrapped keys.

Layout (docs/ciphertext-format.md has the full description)::

    header (11 bytes) = "PQKM" | format version (1) | algorithm id (1) | mode (1)
                        | key version (u32 BE)
    standard / wrap   = header | HPKE enc | HPKE ciphertext (AES-256-GCM, tag last)
    deterministic     = header | salt length (u16 BE) | salt | AES-SIV output (SIV first)

The header is also HPKE's ``info`` (or the AES-SIV associated data), so changing any
field of it makes the ciphertext fail to open.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

from schemas.algorithms import Algorithm
from worker.crypto.errors import InvalidCiphertext

__all__ = [
    "FORMAT_VERSION", "HEADER_SIZE", "MAGIC", "Header", "Mode", "header_bytes", "parse_header",
]

MAGIC = b"PQKM"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBBBI")
HEADER_SIZE = _HEADER.size


class Mode(IntEnum):
    """What the bytes after the header are."""

    STANDARD = 1
    DETERMINISTIC = 2
    KEY_WRAP = 3


ALGORITHM_IDS: dict[Algorithm, int] = {Algorithm.KYBER768: 1, Algorithm.XWING: 2}
_ALGORITHMS_BY_ID = {value: key for key, value in ALGORITHM_IDS.items()}


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed header in front of every ciphertext."""

    algorithm: Algorithm
    mode: Mode
    key_version: int

    def to_bytes(self) -> bytes:
        """The 11 header bytes (also used as HPKE ``info``)."""
        return header_bytes(self.algorithm, self.mode, self.key_version)


@lru_cache(maxsize=4096)
def header_bytes(algorithm: Algorithm, mode: Mode, key_version: int) -> bytes:
    """The 11 header bytes of a ciphertext (the same few per key version: cached)."""
    return _HEADER.pack(MAGIC, FORMAT_VERSION, ALGORITHM_IDS[algorithm], mode, key_version)


def parse_header(blob: bytes) -> Header:
    """Read the header; anything unexpected is the same opaque error."""
    if len(blob) < HEADER_SIZE:
        raise InvalidCiphertext
    magic, version, algorithm_id, mode, key_version = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != FORMAT_VERSION or algorithm_id not in _ALGORITHMS_BY_ID:
        raise InvalidCiphertext
    try:
        parsed_mode = Mode(mode)
    except ValueError:
        raise InvalidCiphertext from None
    return Header(_ALGORITHMS_BY_ID[algorithm_id], parsed_mode, key_version)
