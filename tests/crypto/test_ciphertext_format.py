"""The kem/encrypt byte format (docs/ciphertext-format.md): round trips, tamper
resistance, header binding, and the third-party contract (public key + HPKE only)."""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.algorithms import Algorithm
from worker.crypto import (
    InvalidCiphertext,
    InvalidInput,
    KemKey,
    Mode,
    open_ciphertext,
    seal,
    seal_deterministic_ciphertext,
)
from worker.crypto.mlkem import MlKem768

KYBER = Algorithm.KYBER768
VERSION = 7
SEED = bytes(range(64))
SALT = b"s" * 32
ALL_MODES = frozenset(Mode)
ENCRYPTED = frozenset({Mode.STANDARD, Mode.DETERMINISTIC})  # what kem/decrypt accepts
WRAPPED = frozenset({Mode.KEY_WRAP})  # what kem/key/unwrap accepts
SIZES = [0, 1, 1024, 1024 * 1024]
HEADER_SIZE = 11
ENC_SIZE = {KYBER: 1088, Algorithm.XWING: 1120}
TAG_SIZE = 16
SUITE = hpke.Suite(hpke.KEM.MLKEM768, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def documented_header(algorithm_id: int, mode: int, key_version: int) -> bytes:
    """The header exactly as docs/ciphertext-format.md spells it, built without our code."""
    return b"PQKM" + bytes([1, algorithm_id, mode]) + key_version.to_bytes(4, "big")


@pytest.fixture(scope="module")
def key() -> KemKey:
    return MlKem768().load(SEED)


def _seal(key: KemKey, mode: Mode, plaintext: bytes, key_version: int = VERSION) -> bytes:
    if mode is Mode.DETERMINISTIC:
        return seal_deterministic_ciphertext(key, KYBER, key_version, SALT, plaintext)
    return seal(key, KYBER, key_version, mode, plaintext)


# --- round trips and layout -----------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_round_trip(key: KemKey, mode: Mode, size: int) -> None:
    plaintext = bytes(i % 251 for i in range(size))
    blob = _seal(key, mode, plaintext)
    assert blob[:HEADER_SIZE] == documented_header(1, mode.value, VERSION)
    assert open_ciphertext(key, KYBER, VERSION, blob, frozenset({mode})) == plaintext
    if mode is Mode.DETERMINISTIC:
        assert len(blob) == HEADER_SIZE + 2 + len(SALT) + 16 + size
    else:
        assert len(blob) == HEADER_SIZE + ENC_SIZE[KYBER] + size + TAG_SIZE


@pytest.mark.parametrize("mode", [Mode.STANDARD, Mode.KEY_WRAP], ids=lambda m: m.name)
def test_standard_layout_opens_with_plain_hpke(key: KemKey, mode: Mode) -> None:
    """header | enc | ct: the bytes after the header are one RFC 9180 single-shot
    ciphertext (enc ‖ AES-256-GCM output), and the header is HPKE's info."""
    blob = seal(key, KYBER, VERSION, mode, b"hello")
    header, body = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    private = mlkem.MLKEM768PrivateKey.from_seed_bytes(SEED)
    assert SUITE.decrypt(body, private, info=header) == b"hello"
    with pytest.raises(InvalidTag):
        SUITE.decrypt(body, private, info=b"")


def test_deterministic_layout_matches_the_documented_derivation(key: KemKey) -> None:
    """Recompute a deterministic ciphertext from the documentation alone."""
    plaintext = b"card 4111 1111 1111 1111"
    header = documented_header(1, 2, VERSION)
    root = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"pqkms/v1 deterministic-encryption root",
    ).derive(SEED)
    siv_key = HKDF(algorithm=hashes.SHA256(), length=64, salt=SALT, info=header).derive(root)
    expected = header + struct.pack(">H", len(SALT)) + SALT
    expected += AESSIV(siv_key).encrypt(plaintext, [header])
    assert seal_deterministic_ciphertext(key, KYBER, VERSION, SALT, plaintext) == expected


# --- deterministic mode -------------------------------------------------------------------


def test_deterministic_equality(key: KemKey) -> None:
    first = seal_deterministic_ciphertext(key, KYBER, VERSION, SALT, b"same")
    again = seal_deterministic_ciphertext(MlKem768().load(SEED), KYBER, VERSION, SALT, b"same")
    assert first == again
    others = {
        seal_deterministic_ciphertext(key, KYBER, VERSION, b"t" * 32, b"same"),  # salt
        seal_deterministic_ciphertext(key, KYBER, VERSION + 1, SALT, b"same"),  # version
        seal_deterministic_ciphertext(key, KYBER, VERSION, SALT, b"sane"),  # plaintext
        seal_deterministic_ciphertext(
            MlKem768().load(bytes(64)), KYBER, VERSION, SALT, b"same"
        ),  # key
    }
    assert first not in others
    assert len(others) == 4
    # A different salt is a different key, not only different salt bytes in the blob.
    prefix = HEADER_SIZE + 2 + len(SALT)
    other_salt = seal_deterministic_ciphertext(key, KYBER, VERSION, b"t" * 32, b"same")
    assert first[prefix:] != other_salt[prefix:]


def test_standard_mode_is_randomised(key: KemKey) -> None:
    assert seal(key, KYBER, VERSION, Mode.STANDARD, b"x") != seal(
        key, KYBER, VERSION, Mode.STANDARD, b"x"
    )


def test_deterministic_salt_longer_than_the_length_field_is_invalid_input(key: KemKey) -> None:
    largest = b"s" * 0xFFFF
    blob = seal_deterministic_ciphertext(key, KYBER, VERSION, largest, b"x")
    assert open_ciphertext(key, KYBER, VERSION, blob, ENCRYPTED) == b"x"
    with pytest.raises(InvalidInput):
        seal_deterministic_ciphertext(key, KYBER, VERSION, largest + b"s", b"x")


# --- tampering ----------------------------------------------------------------------------


def _positions(blob_length: int, mode: Mode) -> list[int]:
    """Every byte of the header, length field, salt, SIV/tag and short body; a sample of
    the 1088-byte enc (every 17th byte plus both ends)."""
    if mode is Mode.DETERMINISTIC:
        return list(range(blob_length))
    enc = range(HEADER_SIZE, HEADER_SIZE + ENC_SIZE[KYBER])
    sampled = set(enc[::17]) | {enc[0], enc[1], enc[-2], enc[-1]}
    rest = [i for i in range(blob_length) if i not in enc]
    return sorted(sampled | set(rest))


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_every_single_bit_flip_is_rejected(key: KemKey, mode: Mode) -> None:
    blob = _seal(key, mode, b"sixteen byte msg")
    accepted = []
    for position in _positions(len(blob), mode):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            try:
                open_ciphertext(key, KYBER, VERSION, bytes(tampered), ALL_MODES)
            except InvalidCiphertext:
                continue
            accepted.append((position, bit))
    assert accepted == []


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_truncation_is_rejected(key: KemKey, mode: Mode) -> None:
    blob = _seal(key, mode, b"a plaintext of a little more than sixty bytes, to cut anywhere")
    larger = {
        HEADER_SIZE + ENC_SIZE[KYBER] - 1,
        HEADER_SIZE + ENC_SIZE[KYBER],
        len(blob) // 2,
        len(blob) - TAG_SIZE,
        len(blob) - 1,
    }
    lengths = sorted(set(range(61)) | {n for n in larger if n < len(blob)})
    assert len(blob) > 60 and len(lengths) >= 64
    for length in lengths:
        with pytest.raises(InvalidCiphertext):
            open_ciphertext(key, KYBER, VERSION, blob[:length], ALL_MODES)
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, VERSION, blob + b"\x00", ALL_MODES)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_wrong_key_is_rejected(key: KemKey, mode: Mode) -> None:
    blob = _seal(key, mode, b"secret")
    other = MlKem768().load(bytes(64))
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(other, KYBER, VERSION, blob, ALL_MODES)


# --- header checks and binding --------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.name)
def test_request_must_match_header(key: KemKey, mode: Mode) -> None:
    blob = _seal(key, mode, b"secret")
    with pytest.raises(InvalidCiphertext):  # key version in the request ≠ header
        open_ciphertext(key, KYBER, VERSION + 1, blob, ALL_MODES)
    with pytest.raises(InvalidCiphertext):  # algorithm in the request ≠ header
        open_ciphertext(key, Algorithm.XWING, VERSION, blob, ALL_MODES)
    with pytest.raises(InvalidCiphertext):  # mode not allowed for this operation
        open_ciphertext(key, KYBER, VERSION, blob, ALL_MODES - {mode})


def test_standard_ciphertext_is_not_a_wrapped_key(key: KemKey) -> None:
    standard = seal(key, KYBER, VERSION, Mode.STANDARD, b"k" * 32)
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, VERSION, standard, WRAPPED)
    wrapped = seal(key, KYBER, VERSION, Mode.KEY_WRAP, b"k" * 32)
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, VERSION, wrapped, ENCRYPTED)
    deterministic = seal_deterministic_ciphertext(key, KYBER, VERSION, SALT, b"k" * 32)
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, VERSION, deterministic, WRAPPED)


@pytest.mark.parametrize(
    ("relabel", "mode"),
    [
        ({"mode": Mode.KEY_WRAP}, Mode.STANDARD),
        ({"mode": Mode.STANDARD}, Mode.KEY_WRAP),
        ({"key_version": VERSION + 1}, Mode.STANDARD),
        ({"key_version": VERSION + 1}, Mode.DETERMINISTIC),
    ],
    ids=["standard-as-wrap", "wrap-as-standard", "version-standard", "version-deterministic"],
)
def test_header_is_cryptographically_bound(
    key: KemKey, relabel: dict[str, Any], mode: Mode
) -> None:
    """Rewriting the header and asking for the rewritten values still fails: the header
    is HPKE info (or AES-SIV associated data and HKDF info), not only a label."""
    blob = _seal(key, mode, b"secret")
    new_mode = relabel.get("mode", mode)
    new_version = relabel.get("key_version", VERSION)
    forged = documented_header(1, new_mode.value, new_version) + blob[HEADER_SIZE:]
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, new_version, forged, ALL_MODES)


@pytest.mark.parametrize(
    "header",
    [
        b"PQKX" + bytes([1, 1, 1]) + VERSION.to_bytes(4, "big"),  # magic
        documented_header(1, 1, VERSION).replace(b"PQKM\x01", b"PQKM\x00"),  # version 0
        documented_header(1, 1, VERSION).replace(b"PQKM\x01", b"PQKM\x02"),  # version 2
        documented_header(0, 1, VERSION),  # unknown algorithm id
        documented_header(9, 1, VERSION),
        documented_header(1, 0, VERSION),  # unknown mode
        documented_header(1, 4, VERSION),
    ],
    ids=["magic", "format-0", "format-2", "algorithm-0", "algorithm-9", "mode-0", "mode-4"],
)
def test_unknown_header_values_are_rejected(key: KemKey, header: bytes) -> None:
    blob = seal(key, KYBER, VERSION, Mode.STANDARD, b"secret")
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, VERSION, header + blob[HEADER_SIZE:], ALL_MODES)


# --- the third-party contract -------------------------------------------------------------


def _public_key_from_spki(spki_der: bytes) -> mlkem.MLKEM768PublicKey:
    public = serialization.load_der_public_key(spki_der)
    assert isinstance(public, mlkem.MLKEM768PublicKey)
    return public


@pytest.mark.parametrize(
    ("mode", "allowed"),
    [(Mode.STANDARD, ENCRYPTED), (Mode.KEY_WRAP, WRAPPED)],
    ids=["standard", "key-wrap"],
)
@pytest.mark.parametrize("size", SIZES)
def test_client_with_only_the_public_key(
    key: KemKey, mode: Mode, allowed: frozenset[Mode], size: int
) -> None:
    """What docs/ciphertext-format.md promises: SPKI DER public key (as the API returns
    it), cryptography's HPKE, the documented header as info → we can open it."""
    public = _public_key_from_spki(key.public_key_spki)
    plaintext = b"\x5a" * size
    header = documented_header(1, mode.value, VERSION)
    suite = hpke.Suite(hpke.KEM.MLKEM768, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    blob = header + suite.encrypt(plaintext, public, info=header)
    assert open_ciphertext(key, KYBER, VERSION, blob, allowed) == plaintext


def test_client_header_mismatch_is_rejected(key: KemKey) -> None:
    """A client that sends one header but used another as info gets nothing opened."""
    public = _public_key_from_spki(key.public_key_spki)
    info = documented_header(1, Mode.STANDARD.value, VERSION)
    body = SUITE.encrypt(b"x", public, info=info)
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, VERSION, documented_header(1, 3, VERSION) + body, ALL_MODES)
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(key, KYBER, VERSION, info + SUITE.encrypt(b"x", public), ALL_MODES)


# --- X-Wing (algorithm id 2): the hybrid layer with an X-Wing key -------------------------


@dataclass(frozen=True, slots=True)
class _XWingTestKey(KemKey):
    """Only what hybrid.py needs; pqkms has no X-Wing provider registered yet."""

    private: hpke.MLKEM768X25519PrivateKey = field(repr=False)

    def encapsulate(self) -> tuple[bytes, bytes]:
        raise NotImplementedError

    def decapsulate(self, kem_ciphertext: bytes) -> bytes:
        raise NotImplementedError

    @property
    def hpke_private_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return self.private

    @property
    def hpke_public_key(self) -> hpke.MLKEM768X25519PublicKey:
        return self.private.public_key()


def test_xwing_layout() -> None:
    private = hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(SEED),
        x25519.X25519PrivateKey.from_private_bytes(bytes(range(32))),
    )
    xwing = _XWingTestKey(b"", b"r" * 32, private)
    blob = seal(xwing, Algorithm.XWING, VERSION, Mode.STANDARD, b"hybrid")
    assert blob[:HEADER_SIZE] == documented_header(2, 1, VERSION)
    assert len(blob) == HEADER_SIZE + ENC_SIZE[Algorithm.XWING] + len(b"hybrid") + TAG_SIZE
    assert hpke.KEM.MLKEM768_X25519.enc_length() == ENC_SIZE[Algorithm.XWING]
    assert open_ciphertext(xwing, Algorithm.XWING, VERSION, blob, ENCRYPTED) == b"hybrid"
    with pytest.raises(InvalidCiphertext):
        open_ciphertext(xwing, KYBER, VERSION, blob, ENCRYPTED)


# --- the documentation itself -------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "ciphertext-format.md"


def test_documented_example_header() -> None:
    assert "`50514b4d 01 01 01 00000007`" in DOC.read_text()
    assert documented_header(1, 1, 7).hex() == "50514b4d01010100000007"


def test_documented_python_example_decrypts(key: KemKey) -> None:
    """Run the Python example from docs/ciphertext-format.md as written."""
    match = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match is not None
    public_b64 = base64.b64encode(key.public_key_spki).decode()
    code = match.group(1).replace('public_key_b64 = "..."', f'public_key_b64 = "{public_b64}"')
    assert public_b64 in code
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    assert open_ciphertext(key, KYBER, 7, namespace["ciphertext"], ENCRYPTED) == b"attack at dawn"
