"""X-Wing (draft-connolly-cfrg-xwing-kem-10) against the published vectors and RFC 9180.

Vectors: ../shared/vectors/xwing/ (README there says which draft each file is from).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from schemas.algorithms import Algorithm
from worker.crypto import InvalidCiphertext, InvalidInput, KemKey, Mode, kem_algorithm
from worker.crypto.deterministic import derive_root
from worker.crypto.hybrid import open_ciphertext, seal, seal_deterministic_ciphertext
from worker.crypto.xwing import CIPHERTEXT_SIZE, LABEL, OID, PUBLIC_KEY_SIZE, XWing

VECTORS = Path(os.environ.get("PQKMS_VECTORS_DIR", "/work/shared/vectors")) / "xwing"
SPKI_HEADER = bytes.fromhex("308204d4300d060b2b0601040183e62d81c87a038204c100")


def _load(name: str) -> Any:
    path = VECTORS / name
    if not path.is_file():
        pytest.skip(f"X-Wing vectors not found at {path}")
    return json.loads(path.read_text())


def _draft_vectors() -> list[Any]:
    path = VECTORS / "xwing-test-vectors.json"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    return [pytest.param(v, id=f"draft10-{i}") for i, v in enumerate(json.loads(path.read_text()))]


def _hybrid_vectors() -> list[Any]:
    path = VECTORS / "concrete-hybrid-kems-mlkem768-x25519.json"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    vectors = json.loads(path.read_text())["mlkem768_x25519"]
    return [pytest.param(v, id=f"concrete-{i}") for i, v in enumerate(vectors)]


def public_raw(key: KemKey) -> bytes:
    assert key.public_key_spki[: len(SPKI_HEADER)] == SPKI_HEADER
    return key.public_key_spki[len(SPKI_HEADER) :]


@pytest.fixture(scope="module")
def key() -> KemKey:
    return XWing().load(bytes(range(32)))


def test_vector_files_hold_every_vector() -> None:
    # A silently truncated copy must not pass as "all vectors verified".
    assert len(_load("xwing-test-vectors.json")) == 3
    assert len(_load("concrete-hybrid-kems-mlkem768-x25519.json")["mlkem768_x25519"]) == 10


@pytest.mark.parametrize("vector", _draft_vectors())
def test_draft_vector_keygen_and_decapsulation(vector: dict[str, str]) -> None:
    assert vector["sk"] == vector["seed"]
    key = XWing().load(bytes.fromhex(vector["seed"]))
    assert public_raw(key).hex() == vector["pk"]
    assert key.decapsulate(bytes.fromhex(vector["ct"])).hex() == vector["ss"]


@pytest.mark.parametrize("vector", _hybrid_vectors())
def test_concrete_hybrid_kem_vector(vector: dict[str, str]) -> None:
    seed = bytes.fromhex(vector["seed"])
    assert vector["decapsulation_key"] == vector["seed"]
    expanded = hashlib.shake_256(seed).digest(96)
    assert expanded[:64].hex() == vector["decapsulation_key_pq"]
    assert expanded[64:].hex() == vector["decapsulation_key_t"]
    key = XWing().load(seed)
    assert public_raw(key).hex() == vector["encapsulation_key"]
    assert key.decapsulate(bytes.fromhex(vector["ciphertext"])).hex() == vector["shared_secret"]


def _pem_der(name: str) -> bytes:
    path = VECTORS / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    lines = path.read_text().splitlines()
    return base64.b64decode("".join(line for line in lines if not line.startswith("-----")))


def test_x509_example_public_key_is_our_spki_byte_for_byte(key: KemKey) -> None:
    assert key.public_key_spki == _pem_der("x509-example-xwing.pub.pem")
    assert len(key.public_key_spki) == len(SPKI_HEADER) + PUBLIC_KEY_SIZE


def test_x509_example_private_key_is_the_seed() -> None:
    der = _pem_der("x509-example-xwing.priv.pem")
    # PKCS#8 with the X-Wing OID and the 32-byte seed as a bare OCTET STRING.
    assert bytes.fromhex("060b2b0601040183e62d81c87a") in der
    assert der.endswith(bytes.fromhex("0420") + bytes(range(32)))
    assert OID == "1.3.6.1.4.1.62253.25722"


def test_label_is_the_drafts() -> None:
    assert LABEL.hex() == "5c2e2f2f5e5c"


def test_encapsulate_decapsulate_round_trip(key: KemKey) -> None:
    kem_ciphertext, shared_secret = key.encapsulate()
    assert len(kem_ciphertext) == CIPHERTEXT_SIZE == 1120
    assert len(shared_secret) == 32
    assert key.decapsulate(kem_ciphertext) == shared_secret
    again, other_secret = key.encapsulate()
    assert again != kem_ciphertext and other_secret != shared_secret


def test_encapsulation_follows_the_draft_combiner(key: KemKey) -> None:
    """Recompute the secret from the two components with pyca directly."""
    seed = bytes(range(32))
    expanded = hashlib.shake_256(seed).digest(96)
    kem_ciphertext, shared_secret = key.encapsulate()
    ct_m, ct_x = kem_ciphertext[:1088], kem_ciphertext[1088:]
    ss_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).decapsulate(ct_m)
    x_private = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    ss_x = x_private.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_x = x_private.public_key().public_bytes_raw()
    assert shared_secret == hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + LABEL).digest()


@pytest.mark.parametrize("size", [0, 32, 1088, 1119, 1121, 2240])
def test_wrong_length_ciphertext_is_invalid_input(key: KemKey, size: int) -> None:
    with pytest.raises(InvalidInput, match="1120 bytes"):
        key.decapsulate(b"\x01" * size)


def test_modified_ciphertext_gives_an_unrelated_secret(key: KemKey) -> None:
    kem_ciphertext, shared_secret = key.encapsulate()
    for position in (0, 1087, 1088, 1119):
        tampered = bytearray(kem_ciphertext)
        tampered[position] ^= 0x01
        assert key.decapsulate(bytes(tampered)) != shared_secret


# u = 0, u = 1 and a point of order 8 (RFC 7748 §6.1 / libsodium's blocklist).
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=["zero", "one", "order8"])
def test_low_order_x25519_part_decapsulates_as_the_draft_says(key: KemKey, point: bytes) -> None:
    """No all-zero check in the draft: X25519 yields zeros, the combiner still hashes ss_M.

    The result is neither an error nor predictable without the ML-KEM secret.
    """
    seed = bytes(range(32))
    expanded = hashlib.shake_256(seed).digest(96)
    kem_ciphertext, _ = key.encapsulate()
    ct_m = kem_ciphertext[:1088]
    ss_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).decapsulate(ct_m)
    pk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:]).public_key()
    expected = hashlib.sha3_256(
        ss_m + bytes(32) + point + pk_x.public_bytes_raw() + LABEL
    ).digest()
    assert key.decapsulate(ct_m + point) == expected


# --- HPKE: pyca's MLKEM768_X25519 KEM is X-Wing --------------------------------------

_SUITE_ID = b"HPKE" + bytes.fromhex("647a" "0001" "0002")  # X-Wing, HKDF-SHA256, AES-256-GCM


def _labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), b"HPKE-v1" + _SUITE_ID + label + ikm, "sha256").digest()


def _labeled_expand(prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + _SUITE_ID + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled).derive(prk)


def _key_schedule(shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 §5.1, base mode, first message: (key, nonce)."""
    context = (
        b"\x00"
        + _labeled_extract(b"", b"psk_id_hash", b"")
        + _labeled_extract(b"", b"info_hash", info)
    )
    secret = _labeled_extract(shared_secret, b"secret", b"")
    return (
        _labeled_expand(secret, b"key", context, 32),
        _labeled_expand(secret, b"base_nonce", context, 12),
    )


SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def test_pyca_hpke_output_opens_with_our_xwing_decapsulation(key: KemKey) -> None:
    info = b"pqkms test info"
    sealed = SUITE.encrypt(b"attack at dawn", key.hpke_public_key, info=info)
    enc, ciphertext = sealed[:CIPHERTEXT_SIZE], sealed[CIPHERTEXT_SIZE:]
    aead_key, nonce = _key_schedule(key.decapsulate(enc), info)
    assert AESGCM(aead_key).decrypt(nonce, ciphertext, b"") == b"attack at dawn"


def test_our_xwing_encapsulation_opens_with_pyca_hpke(key: KemKey) -> None:
    info = b"pqkms test info"
    enc, shared_secret = key.encapsulate()
    aead_key, nonce = _key_schedule(shared_secret, info)
    sealed = enc + AESGCM(aead_key).encrypt(nonce, b"hello from the draft", b"")
    assert SUITE.decrypt(sealed, key.hpke_private_key, info=info) == b"hello from the draft"


def test_hpke_public_key_is_the_xwing_public_key(key: KemKey) -> None:
    raw = public_raw(key)
    rebuilt = hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]),
        x25519.X25519PublicKey.from_public_bytes(raw[1184:]),
    )
    sealed = SUITE.encrypt(b"from the public key only", rebuilt, info=b"i")
    assert SUITE.decrypt(sealed, key.hpke_private_key, info=b"i") == b"from the public key only"


@pytest.mark.parametrize("mode", [Mode.STANDARD, Mode.KEY_WRAP])
def test_hpke_seal_and_open_for_xwing(key: KemKey, mode: Mode) -> None:
    blob = seal(key, Algorithm.XWING, 7, mode, b"k" * 32)
    assert open_ciphertext(key, Algorithm.XWING, 7, blob, frozenset({mode})) == b"k" * 32
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, Algorithm.KYBER768, 7, blob, frozenset({mode}))
    other = XWing().load(bytes(32))
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(other, Algorithm.XWING, 7, blob, frozenset({mode}))


def test_deterministic_mode_for_xwing(key: KemKey) -> None:
    salt = b"s" * 32
    one = seal_deterministic_ciphertext(key, Algorithm.XWING, 1, salt, b"same")
    two = seal_deterministic_ciphertext(key, Algorithm.XWING, 1, salt, b"same")
    assert one == two
    allowed = frozenset({Mode.DETERMINISTIC})
    assert open_ciphertext(key, Algorithm.XWING, 1, one, allowed) == b"same"
    assert key.deterministic_root == derive_root(bytes(range(32)))


def test_registry_sizes_and_seed() -> None:
    provider = kem_algorithm(Algorithm.XWING)
    assert (provider.seed_size, provider.public_key_size, provider.ciphertext_size,
            provider.shared_secret_size) == (32, 1216, 1120, 32)
    seed = provider.generate_seed()
    assert len(seed) == 32
    assert len(public_raw(provider.load(seed))) == 1216
    with pytest.raises(InvalidInput):
        provider.load(b"\x00" * 64)
