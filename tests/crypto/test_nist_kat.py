"""NIST known-answer tests (cryptography-vectors) through our key loading.

ML-KEM-768: our 64-byte stored seed is d ‖ z (FIPS 203 ML-KEM.KeyGen_internal), so
``MlKem768().load(d + z)`` must derive the KAT's encapsulation key, decapsulate ``ct`` to
``ss`` and the invalid ``ct_n`` to the implicit-rejection secret ``ss_n``.

ML-DSA-65: ``MlDsa65().load(xi)`` must derive the KAT's public key and accept the KAT's
(deterministic) signature with its context. pyca signs hedged only, so the signing side
is checked by verifying our own signature under the KAT's public key.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from worker.crypto.errors import InvalidInput
from worker.crypto.mldsa import MlDsa65
from worker.crypto.mlkem import MlKem768

from .vector_files import load_rsp, pure_mu

MLKEM_KAT = load_rsp("asymmetric/MLKEM/kat_MLKEM_768.rsp")
MLDSA_KAT = load_rsp("asymmetric/MLDSA/kat_MLDSA_65_det_pure.rsp")


def test_kat_files_have_the_expected_sizes() -> None:
    # Guards against a vectors package that silently ships fewer cases.
    assert len(MLKEM_KAT) == 1000
    assert len(MLDSA_KAT) == 100


def _raw_public(spki_der: bytes) -> bytes:
    public = serialization.load_der_public_key(spki_der)
    assert isinstance(public, mlkem.MLKEM768PublicKey | mldsa.MLDSA65PublicKey)
    return public.public_bytes_raw()


@pytest.mark.parametrize("vector", MLKEM_KAT, ids=lambda v: f"count{v['count']}")
def test_mlkem768_kat_keygen_and_decapsulation(vector: dict[str, str]) -> None:
    seed = bytes.fromhex(vector["d"]) + bytes.fromhex(vector["z"])
    key = MlKem768().load(seed)

    assert _raw_public(key.public_key_spki) == bytes.fromhex(vector["pk"])
    assert key.decapsulate(bytes.fromhex(vector["ct"])) == bytes.fromhex(vector["ss"])
    # ct_n is a modified ciphertext: implicit rejection gives the KAT's ss_n, not an error.
    assert key.decapsulate(bytes.fromhex(vector["ct_n"])) == bytes.fromhex(vector["ss_n"])


def test_mlkem768_kat_wrong_length_ciphertext_is_invalid_input() -> None:
    vector = MLKEM_KAT[0]
    key = MlKem768().load(bytes.fromhex(vector["d"]) + bytes.fromhex(vector["z"]))
    ct = bytes.fromhex(vector["ct"])
    for bad in (b"", ct[:-1], ct + b"\x00", ct + ct):
        with pytest.raises(InvalidInput):
            key.decapsulate(bad)


@pytest.mark.parametrize("vector", MLDSA_KAT, ids=lambda v: f"count{v['count']}")
def test_mldsa65_kat_keygen_and_verify(vector: dict[str, str]) -> None:
    key = MlDsa65().load(bytes.fromhex(vector["xi"]))
    expected_public = bytes.fromhex(vector["pk"])
    message = bytes.fromhex(vector["msg"])
    context = bytes.fromhex(vector["ctx"])
    signed = bytes.fromhex(vector["sm"])
    signature = signed[: len(signed) - len(message)]
    assert signed[len(signature) :] == message  # sm = signature ‖ message

    assert key.public_raw == expected_public
    assert _raw_public(key.public_key_spki) == expected_public
    assert key.verify(signature, message, context)
    # The same signature under any other context or message is invalid.
    assert not key.verify(signature, message, context + b"\x00")
    assert not key.verify(signature, message + b"\x00", context)
    # Our μ construction (used by the HashML-DSA tests) agrees with the KAT.
    assert key.public.verify_mu(signature, pure_mu(expected_public, message, context)) is None

    # Signing side: our hedged signature verifies under the KAT public key, not ours.
    ours = key.sign(message, context)
    mldsa.MLDSA65PublicKey.from_public_bytes(expected_public).verify(ours, message, context)
