"""A key store stand-in for the signature services' tests: no database, one key."""

from __future__ import annotations

import secrets

from schemas.algorithms import Algorithm
from schemas.errors import ErrorCode
from worker.crypto import SignatureKey, signature_algorithm
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_access import KeyAccess, Usage

__all__ = ["OneSignatureKey"]


class OneSignatureKey(KeyAccess):
    """Version 1 (of any signature algorithm) is one fresh Dilithium3 key; every other
    version is not found, with the service's own error."""

    def __init__(self) -> None:  # no store: the services only ask for keys
        self.key = signature_algorithm(Algorithm.DILITHIUM3).load(secrets.token_bytes(32))

    async def signature_key(self, caller: Caller, algorithm: Algorithm, version: int,
                            usage: Usage) -> SignatureKey:
        if version != 1:
            raise ServiceError(ErrorCode.NOT_FOUND,
                               f"Key version {version} not found for {algorithm.value}")
        return self.key
