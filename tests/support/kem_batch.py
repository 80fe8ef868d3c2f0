"""A key access with one Kyber768 version and a batch service on it, for batch tests that
need no store."""

from __future__ import annotations

import base64
import secrets

from schemas.algorithms import Algorithm
from schemas.errors import ErrorCode
from worker.crypto import KemKey, kem_algorithm
from worker.errors import ServiceError
from worker.services.batch import BatchService
from worker.services.context import Caller
from worker.services.crypto_runner import CryptoRunner
from worker.services.key_access import KeyAccess, Usage

__all__ = ["VersionOneKeys", "b64", "batch_service"]


class VersionOneKeys(KeyAccess):
    """Kyber768 version 1 exists; every other version is not found."""

    def __init__(self) -> None:  # no store: the batch only asks for keys
        self.key = kem_algorithm(Algorithm.KYBER768).load(secrets.token_bytes(64))
        self.lookups = 0

    async def kem_key(self, caller: Caller, algorithm: Algorithm, version: int,
                      usage: Usage) -> KemKey:
        self.lookups += 1
        if version != 1:
            raise ServiceError(ErrorCode.KEM_KEY_NOT_FOUND,
                               f"Key version {version} not found for {algorithm.value}")
        return self.key


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode()


def batch_service(keys: KeyAccess) -> BatchService:
    """A batch service on ``keys`` with one crypto thread and roomy limits."""
    return BatchService(keys, CryptoRunner(1), max_message_bytes=4096, max_items=1000,
                        message_limit=8 * 1024 * 1024)
